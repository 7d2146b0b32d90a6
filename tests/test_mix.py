"""Training mixes: sources filtered and taken by weight or count, the shipped mix configs, and the realised mix
that a run reports (pure, on tiny synthetic examples Parquet; one short text-backbone run without Ray)."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from docrerank.core.config import ConfigError, load_config
from docrerank.data.mix import (
    GroupFilter,
    mix_counts,
    plan_from_config,
    realised_mix,
    scan_source,
)
from docrerank.train.config import DataConfig, TrainConfig
from docrerank.data.examples import read_groups

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "jobs" / "configs"
FINANCE = ["year", "company", "numeric_value", "financial_metric", "subject_metric", "business_segment"]


# ------------------------------------------------------------------------------------------ synthetic data
def generated_group(gid: str, attributes: list[str | None]) -> list[dict]:
    """1 positive + one generated negative per attribute, all on one page."""
    page = {"group_id": gid, "page_id": f"page-{gid}", "image": None, "image_format": "png",
            "text": f"text of page {gid}"}
    rows = [dict(page, query=f"q {gid}", label=1, kind="positive", weight=3.0, attribute=None)]
    return rows + [dict(page, query=f"q {gid} neg {i}", label=0, kind="generated", weight=1.0, attribute=a)
                   for i, a in enumerate(attributes)]


def mined_group(gid: str, k: int = 3) -> list[dict]:
    """1 query + its positive page and k mined pages."""
    return [{"group_id": gid, "query": f"mined q {gid}", "page_id": f"page-{gid}-{i}", "image": None,
             "image_format": "png", "text": f"mined page {gid} {i}", "label": int(i == 0),
             "kind": "positive" if i == 0 else "mined", "weight": 3.0 if i == 0 else 1.0, "attribute": None}
            for i in range(k + 1)]


def write_examples(path: Path, groups: list[list[dict]], per_file: int = 7, drop: tuple[str, ...] = ()) -> str:
    """Examples Parquet files of ``per_file`` groups each (row groups of 5 rows, so groups straddle them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from docrerank.core.schema import examples_schema

    path.mkdir(parents=True, exist_ok=True)
    schema = examples_schema()
    for f in range(0, len(groups), per_file):
        rows = [r for g in groups[f:f + per_file] for r in g]
        table = pa.Table.from_pylist(rows, schema=schema).drop_columns(list(drop))
        pq.write_table(table, path / f"part-{f // per_file:05d}.parquet", row_group_size=5)
    return str(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    gen = [generated_group(f"g{i}", ["other"] * 3) for i in range(40)]
    mined = [mined_group(f"m{i}") for i in range(30)]
    fin = [generated_group(f"f{i}", [FINANCE[i % 6], FINANCE[(i + 1) % 6], FINANCE[(i + 2) % 6]]) for i in range(12)]
    general = [generated_group(f"x{i}", [None, "other", None]) for i in range(18)]
    # one directory holding generated (finance and general) and mined groups, interleaved
    mixed = [g for trio in zip(fin, general[:12], mined[:12]) for g in trio] + general[12:]
    return {"generated": write_examples(root / "generated", gen), "mined": write_examples(root / "mined", mined),
            "finance": write_examples(root / "finance", fin), "mixed": write_examples(root / "mixed", mixed),
            "no_attr": write_examples(root / "no_attr", gen[:5], drop=("attribute",))}


def data_config(sources: list[dict], **kw) -> DataConfig:
    return DataConfig.model_validate({"sources": sources, "chunk_groups": 4, **kw})


def groups_by_source(tasks: list[dict]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in tasks:
        out.setdefault(t["source"], []).extend(t["group_ids"])
    return out


# ----------------------------------------------------------------------------------------------- configs
MIX_CONFIGS = ["train_local_mined.yaml", "train_local.yaml", "train_paper_mix_mined.yaml",
               "train_paper_mix_base.yaml", "train_paper_mix_base_finance.yaml", "train_paper_mix_full.yaml"]


@pytest.mark.parametrize("name", MIX_CONFIGS)
def test_mix_configs_load(name):
    cfg = load_config(TrainConfig, CONFIGS / name)
    names = [s.label for s in cfg.data.sources]
    assert "mined" in names and cfg.data.num_groups
    if "mined" in name:
        assert names == ["mined"]
    else:
        assert "generated" in names and all(s.mix_weight == 1.0 for s in cfg.data.sources if s.count is None)
    if "finance" in name or "full" in name:
        assert [s.count for s in cfg.data.sources if s.name == "finance"] == [20000]


def test_local_mix_configs_are_twins_of_train_local():
    base = load_config(TrainConfig, CONFIGS / "train_local.yaml").model_dump()
    twin = load_config(TrainConfig, CONFIGS / "train_local_mined.yaml").model_dump()
    for key in base:
        if key not in ("output", "name", "data"):
            assert twin[key] == base[key], key
    same = {k: v for k, v in twin["data"].items() if k != "sources"}
    assert same == {k: v for k, v in base["data"].items() if k != "sources"}
    assert twin["data"]["num_groups"] == base["data"]["num_groups"] == 160
    assert twin["output"] == "out/train_local_mined" and base["output"] == "out/train_local"
    assert [s["path"] for s in base["data"]["sources"]] == ["out/local/mined", "out/local/examples"]
    assert [s["path"] for s in twin["data"]["sources"]] == ["out/local/mined"]


def test_source_and_mix_validation_name_the_key():
    def load(sources, *extra):
        overrides = ["output=o", f"data.sources={json.dumps(sources)}", *extra]
        return load_config(TrainConfig, None, overrides)

    with pytest.raises(ConfigError, match=r"data\.sources\.0.*set weight or count, not both"):
        load([{"path": "a", "weight": 2, "count": 5}])
    with pytest.raises(ConfigError, match=r"data\.sources\.0.*kinds: expected a non-empty list"):
        load([{"path": "a", "kinds": []}])
    with pytest.raises(ConfigError, match=r"attributes and exclude_attributes both name \['year'\]"):
        load([{"path": "a", "attributes": ["year"], "exclude_attributes": ["year", "company"]}])
    with pytest.raises(ConfigError, match=r"names must be unique, got \['a'\]"):
        load([{"path": "a", "kinds": ["mined"]}, {"path": "a", "kinds": ["generated"]}])
    with pytest.raises(ConfigError, match=r"num_groups=10 leaves 0 groups for the 1 weighted"):
        load([{"path": "a", "count": 10}, {"path": "b"}], "data.num_groups=10")
    with pytest.raises(ConfigError, match=r"num_groups=11: every source has a count, so it must equal their sum 10"):
        load([{"path": "a", "count": 4}, {"path": "b", "count": 6}], "data.num_groups=11")
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.count"):
        load([{"path": "a", "count": 0}])
    ok = load([{"path": "a", "count": 4, "name": "x", "kinds": ["mined"]}, {"path": "a", "name": "y"}],
              "data.num_groups=10")
    assert [s.count for s in ok.data.sources] == [4, None] and ok.data.sources[1].mix_weight == 1.0
    # the resolved config round-trips (Ray workers rebuild it from its dump)
    assert TrainConfig.model_validate(ok.model_dump(mode="json")) == ok


# ------------------------------------------------------------------------------------------------ counts
def test_mix_counts_with_counts_and_weights():
    assert mix_counts([100, 100, 50], [1, 1, 1], 120, [None, None, 20]) == [50, 50, 20]
    assert mix_counts([100, 100, 50], [1, 1, 1], None, [None, None, 20]) == [100, 100, 20]  # weighted: no repeats
    assert mix_counts([100, 30, 50], [1, 1, 1], None, [None, None, 80]) == [30, 30, 80]  # a count may repeat
    assert mix_counts([10, 10], [1, 1], 21) in ([11, 10], [10, 11])  # the total is exact
    assert sum(mix_counts([7, 7, 7], [1, 1, 1], 100)) == 100
    assert mix_counts([5, 5], [1, 1], None, [3, 4]) == [3, 4]
    with pytest.raises(ValueError, match="must be their sum 7, got 8"):
        mix_counts([5, 5], [1, 1], 8, [3, 4])
    with pytest.raises(ValueError, match="leaves 0 groups"):
        mix_counts([5, 5], [1, 1], 3, [3, None])
    with pytest.raises(ValueError, match="one weight per source"):
        mix_counts([5, 5], [1, 1], None, [3])


# ------------------------------------------------------------------------------------------------- plans
def test_base_is_half_mined_half_generated(dirs):
    for num_groups, expect in ((None, (30, 30)), (50, (25, 25)), (51, (26, 25))):
        cfg = data_config([{"path": dirs["generated"], "name": "generated"}, {"path": dirs["mined"], "name": "mined"}],
                          num_groups=num_groups)
        got = groups_by_source(plan_from_config(cfg, epochs=1, seed=0))
        n_gen, n_mined = len(got["generated"]), len(got["mined"])
        assert abs(n_gen - n_mined) <= 1 and sorted((n_gen, n_mined), reverse=True) == list(expect)
        assert len(set(got["generated"])) == n_gen and len(set(got["mined"])) == n_mined  # no repeats
        assert all(g.startswith("g") for g in got["generated"]) and all(g.startswith("m") for g in got["mined"])


def test_counts_override_weights(dirs):
    cfg = data_config([{"path": dirs["generated"], "name": "generated", "weight": 1},
                       {"path": dirs["mined"], "name": "mined", "weight": 1},
                       {"path": dirs["finance"], "name": "finance", "count": 20}], num_groups=60)
    got = groups_by_source(plan_from_config(cfg, epochs=1, seed=0))
    assert {k: len(v) for k, v in got.items()} == {"generated": 20, "mined": 20, "finance": 20}
    assert len(set(got["finance"])) == 12  # 20 from a source of 12: repeated, reshuffled
    # without num_groups, weighted sources take what they hold at their weights, counted ones their count
    cfg = data_config([{"path": dirs["generated"], "name": "generated", "weight": 1},
                       {"path": dirs["mined"], "name": "mined", "weight": 1},
                       {"path": dirs["finance"], "name": "finance", "count": 5}])
    got = groups_by_source(plan_from_config(cfg, epochs=1, seed=0))
    assert {k: len(v) for k, v in got.items()} == {"generated": 30, "mined": 30, "finance": 5}


def test_filters_keep_only_matching_groups(dirs):
    chunks = scan_source(dirs["mixed"], 4, GroupFilter(kinds=("mined",)))
    assert sorted(g for c in chunks for g in c.group_ids) == sorted(f"m{i}" for i in range(12))
    assert all(len(c.group_ids) <= 4 for c in chunks)
    cfg = data_config([
        {"path": dirs["mixed"], "name": "mined", "kinds": ["mined"]},
        {"path": dirs["mixed"], "name": "finance", "attributes": FINANCE},
        {"path": dirs["mixed"], "name": "general", "kinds": ["generated"], "exclude_attributes": FINANCE},
    ])
    got = groups_by_source(plan_from_config(cfg, epochs=1, seed=0))
    assert set(got["mined"]) <= {f"m{i}" for i in range(12)}
    assert set(got["finance"]) <= {f"f{i}" for i in range(12)}
    assert set(got["general"]) <= {f"x{i}" for i in range(18)}
    assert {k: len(v) for k, v in got.items()} == {"mined": 12, "finance": 12, "general": 12}
    # one attribute picks the groups with any negative changing it
    year = scan_source(dirs["mixed"], 4, GroupFilter(attributes=("year",)))
    assert sorted(g for c in year for g in c.group_ids) == sorted(f"f{i}" for i in range(12) if
                                                                 "year" in {FINANCE[(i + d) % 6] for d in range(3)})


def test_filter_matching_nothing_names_the_source(dirs):
    cfg = data_config([{"path": dirs["generated"], "name": "gen"},
                       {"path": dirs["mined"], "name": "fin", "attributes": ["year"]}])
    with pytest.raises(ValueError, match=r"data source 'fin' \(.*mined\): no group matches the filter "
                                         r"attributes=\['year'\]"):
        plan_from_config(cfg, epochs=1, seed=0)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['attribute'\]"):
        scan_source(dirs["no_attr"], 4, GroupFilter(attributes=("year",)))
    assert len(scan_source(dirs["no_attr"], 4)) == 2  # no filter: the attribute column is not needed


def test_example_sets_with_the_old_weight_column_load_the_same(tmp_path):
    import dataclasses

    import pyarrow as pa
    import pyarrow.parquet as pq

    # Sets written before the weight column was dropped still train: only the needed columns are read.
    table = pa.Table.from_pylist([r for i in range(3) for r in generated_group(f"g{i}", ["year", None])])
    for name, t in (("old", table), ("new", table.drop_columns(["weight"]))):
        (tmp_path / name).mkdir()
        pq.write_table(t, tmp_path / name / "part-00000.parquet")
    old, new = (read_groups(str(tmp_path / name)) for name in ("old", "new"))
    assert [dataclasses.replace(g, source="") for g in old] == [dataclasses.replace(g, source="") for g in new]
    assert [g.labels for g in old] == [[1, 0, 0]] * 3 and not hasattr(old[0], "weights")
    # positive_weight is the one weighting: the per-example switch is gone
    with pytest.raises(ConfigError, match="use_example_weights"):
        load_config(TrainConfig, overrides=["output=x", "data.sources=[{path: x}]", "loss.use_example_weights=true"])


def test_plans_are_deterministic_per_seed(dirs):
    cfg = data_config([{"path": dirs["generated"], "name": "generated"}, {"path": dirs["mined"], "name": "mined"}],
                      num_groups=40)
    a, b, c = (plan_from_config(cfg, epochs=2, seed=s) for s in (1, 1, 2))
    assert a == b and a != c
    assert [len(v) for v in groups_by_source(a).values()] == [40, 40]  # 2 epochs x 20


def test_realised_mix_matches_the_plan(dirs):
    cfg = data_config([{"path": dirs["generated"], "name": "generated"}, {"path": dirs["mined"], "name": "mined"},
                       {"path": dirs["finance"], "name": "finance", "count": 10}], num_groups=50)
    tasks = plan_from_config(cfg, epochs=2, seed=0)
    mix = realised_mix(tasks)
    got = groups_by_source(tasks)
    assert mix["planned_groups"] == mix["total"]["groups"] == 100
    for name, ids in got.items():
        rec = mix["sources"][name]
        assert rec["groups"] == len(ids) and rec["distinct_groups"] == len(set(ids))
        assert rec["examples"] == 4 * len(ids)  # 1 positive + 3 negatives per group
        kind = "mined" if name == "mined" else "generated"
        assert rec["negatives"] == {kind: 3 * len(ids)}
        assert rec["share"] == round(len(ids) / 100, 4)
    assert mix["sources"]["finance"]["groups"] == 20 and mix["sources"]["generated"]["groups"] == 40
    assert mix["total"]["negatives"] == {"generated": 180, "mined": 120} and mix["total"]["examples"] == 400
    # a run of fixed steps trains the first groups of the stream
    first = realised_mix(tasks, limit=13)
    assert first["total"]["groups"] == 13 and first["planned_groups"] == 100
    head, left = Counter(), 13
    for t in tasks:
        head[t["source"]] += min(left, len(t["group_ids"]))
        left -= min(left, len(t["group_ids"]))
    assert {k: v["groups"] for k, v in first["sources"].items()} == {k: v for k, v in head.items() if v}


def test_local_run_writes_and_prints_the_realised_mix(dirs, tmp_path, capsys):
    from jobs.train_reranker import main

    out = tmp_path / "run"
    sources = [{"path": dirs["generated"], "name": "generated"}, {"path": dirs["mined"], "name": "mined"}]
    rc = main(["--config", str(CONFIGS / "train_local.yaml"), f"output={out}",
               f"data.sources={json.dumps(sources)}", "data.num_groups=8", "data.validation=null",
               "data.ranking_validation=null",
               "data.groups_per_device=2", "optim.max_steps=2", "optim.epochs=1", "scaling.use_ray=false",
               "deepspeed.enabled=false", "export=false"])
    assert rc == 0
    mix = json.loads((out / "mix.json").read_text())
    assert mix["planned_groups"] == 8 and mix["total"]["groups"] == 4  # 2 steps x 2 groups
    assert mix["total"]["examples"] == 16
    printed = capsys.readouterr().out
    assert "mix source" in printed and "neg mined" in printed and "neg generated" in printed
    meta = json.loads((out / "_meta" / "train_reranker.json").read_text())
    assert meta["summary"]["mix"] == mix
