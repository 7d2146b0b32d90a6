"""Ray Data glue shared by the jobs: batches as rows, stages chained by class in one actor, light Parquet reads, and
the resume rule "a batch's marker shard is written last".

    ds = ds.map_batches(ChainStage, fn_constructor_kwargs={"stages": [(PositivesStage, {...}), (VerifyStage, {...})]},
                        batch_format=batch_format_of([PositivesStage, VerifyStage]), compute=...)

Stages are referenced by class (Ray pickles a class by its module and name), never by ``"module:Class"`` strings.
Each stage class may declare ``batch_format`` ("numpy" by default, "pyarrow" for stages that take Arrow tables);
the first stage of a chain decides the format its actor receives. Nothing here imports Ray at module import.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

from docrerank.core import storage

# Logical CPUs of a read task: reading is mostly I/O, and model-free actors leave a sliver of their core to it, so a
# pool as large as the machine never starves the read (a deadlock Ray Data cannot resolve on one small node).
READ_CPUS = 0.1

StageSpec = tuple[type, dict]


def to_python(value: Any) -> Any:
    """Numpy arrays / scalars from a Ray batch -> plain lists, dicts and Python scalars (recursively)."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    return value


def batch_rows(batch: Any) -> list[dict]:
    """Rows of a Ray batch, whether a pyarrow Table or a dict of columns (numpy arrays or lists)."""
    if hasattr(batch, "to_pylist"):
        return batch.to_pylist()
    cols = list(batch)
    n = len(batch[cols[0]]) if cols else 0
    return [{c: to_python(batch[c][i]) for c in cols} for i in range(n)]


def rows_to_columns(rows: list[dict], empty: Any = None) -> dict:
    """A dict of columns from row dicts (``empty`` when there are no rows)."""
    if not rows:
        return {} if empty is None else empty
    return {k: [r[k] for r in rows] for k in rows[0]}


def batch_format_of(stages: Sequence[StageSpec | type]) -> str:
    """The batch format a chain of stages takes: its first stage's ``batch_format`` ("numpy" by default)."""
    first = stages[0][0] if isinstance(stages[0], tuple) else stages[0]
    return getattr(first, "batch_format", "numpy")


class ChainStage:
    """Runs several stages in one actor, in order (one actor pool per model; model-free stages ride along).

    ``stages``: ``(StageClass, constructor kwargs)`` pairs; each class is built once per actor and called on every
    batch with the previous stage's output.
    """

    def __init__(self, stages: Sequence[StageSpec]):
        for cls, kwargs in stages:
            if not isinstance(cls, type) or not isinstance(kwargs, dict):
                raise TypeError(f"ChainStage: expected (class, kwargs) pairs, got ({cls!r}, {type(kwargs).__name__})")
        self.stages = [cls(**kwargs) for cls, kwargs in stages]

    def __call__(self, batch: Any) -> Any:
        for stage in self.stages:
            batch = stage(batch)
        return batch


def _read_files(batch: dict, columns: list[str] | None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for uri in batch["uri"]:
        loc = storage.resolve(str(uri))
        tables.append(pq.read_table(loc.path, columns=columns, filesystem=loc.fs))
    return pa.concat_tables(tables)


def read_parquet_files(loc: storage.Location, columns: list[str] | None = None):
    """A dataset of every Parquet file under ``loc``, read by tasks of ``READ_CPUS`` logical CPUs.

    (``ray.data.read_parquet`` lists files in a task that takes a whole CPU; on a small node that CPU may be held by
    the stage actors, and the read never starts.)"""
    files = [storage.uri_of(loc, p) for p in storage.list_files(loc, suffixes=(".parquet",))]
    if not files:
        raise ValueError(f"no Parquet files under {loc.uri}")
    return read_parquet_files_list(files, columns)


def read_parquet_files_list(files: list[str], columns: list[str] | None = None):
    """A dataset of the given Parquet files (one light read task per file)."""
    import ray.data

    ds = ray.data.from_items([{"uri": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(_read_files, batch_size=1, fn_kwargs={"columns": columns}, num_cpus=READ_CPUS)


def write_shards(out: storage.Location, name: str, tables: dict, marker: str) -> None:
    """Write shard ``name`` of each table (``{directory: pyarrow.Table}``), the ``marker`` table last: a batch whose
    marker shard exists is complete. A table other than the marker with no rows gets no shard: a 0-row Parquet file
    breaks readers (``datasets.load_dataset``: "BatchSize must be greater than 0")."""
    for key in [k for k in tables if k != marker] + ([marker] if marker in tables else []):
        if key != marker and tables[key].num_rows == 0:
            continue
        storage.write_table_atomic(out.join(key, name), tables[key])


def done_shard_names(out: storage.Location, marker: str) -> set[str]:
    """File names of the marker shards under ``out/marker``: the batches that finished."""
    return {p.rsplit("/", 1)[-1] for p in storage.list_files(out.join(marker), suffixes=(".parquet",))}


def remove_orphans(out: storage.Location, tables: Sequence[str], marker: str) -> int:
    """Delete shards of ``tables`` whose batch has no marker shard (an interrupted run); returns how many."""
    done = done_shard_names(out, marker)
    n = 0
    for table in tables:
        if table == marker:
            continue
        for f in storage.list_files(out.join(table), suffixes=(".parquet",)):
            if f.rsplit("/", 1)[-1] not in done:
                out.fs.delete_file(f)
                n += 1
    return n


def remove_empty_shards(out: storage.Location, tables: Sequence[str]) -> int:
    """Delete the 0-row shards of ``tables`` that earlier versions wrote (a batch whose examples were all held out,
    a resumed run's batch of finished pages); returns how many. Only Parquet footers are read."""
    import pyarrow.parquet as pq

    n = 0
    for table in tables:
        for f in storage.list_files(out.join(table), suffixes=(".parquet",)):
            with out.fs.open_input_file(f) as fh:
                rows = pq.ParquetFile(fh).metadata.num_rows
            if rows == 0:
                out.fs.delete_file(f)
                n += 1
    return n


def iter_checked(batches, check, every_s: float = 5.0):
    """Yield the items of ``batches`` (e.g. a Ray Data ``iter_batches`` with ``preserve_order``) in order while
    calling ``check()`` at least every ``every_s`` seconds, also while the next item is not there yet: an ordered
    stream waits for its slowest batch, and the model pools' checks (new actors, failed requests) must not wait with
    it. An exception of ``check`` (or of the stream) is raised here at once; the reading thread is a daemon."""
    import queue
    import threading
    import time

    q: queue.Queue = queue.Queue(maxsize=2)
    end = object()

    def pull() -> None:
        try:
            for item in batches:
                q.put((item, None))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            q.put((None, err))
            return
        q.put((end, None))

    threading.Thread(target=pull, name="iter_checked", daemon=True).start()
    last = time.monotonic()
    while True:
        try:
            item, err = q.get(timeout=max(0.05, every_s - (time.monotonic() - last)))
        except queue.Empty:
            item, err = None, None
        if time.monotonic() - last >= every_s:
            check()
            last = time.monotonic()
        if err is not None:
            raise err
        if item is end:
            return
        if item is not None:
            yield item


@contextlib.contextmanager
def excluded_from_ray_data(cpus: float = 0, gpus: float = 0):
    """While inside: Ray Data counts ``cpus`` and ``gpus`` of the cluster as held by others (the model pools) and
    sizes its own workers from what is left, instead of waiting for resources that never free up."""
    import warnings

    import ray.data
    from ray.data._internal.execution.interfaces import ExecutionResources

    opts = ray.data.DataContext.get_current().execution_options
    before = opts.exclude_resources
    with warnings.catch_warnings():  # deprecated in favour of node labels, which pools sharing a node cannot use
        warnings.simplefilter("ignore")
        opts.exclude_resources = ExecutionResources(cpu=cpus, gpu=gpus)
        try:
            yield
        finally:
            opts.exclude_resources = before


def autoscaler_view(labels: Sequence[dict] = (), status_wait_s: float = 30.0) -> tuple[list[dict] | None, bool]:
    """What the joined cluster's autoscaler can add: (its node types as ``{name, resources, max_count, count}``
    when Ray publishes them, whether an autoscaler can add nodes at all). ``labels``: the live nodes' labels, to
    count the nodes of each type; ``status_wait_s``: how long a job that joined a cluster (``RAY_ADDRESS``)
    waits for the monitor's first status report.

    Ray publishes node types with their limits on some platforms (``get_cluster_config``, as Ray Train and Data
    read them); its open-source autoscaler does not, and is recognised by its status instead: without
    ``--autoscaling-config`` the monitor is read-only and names each node's type ``node_<node id>``."""
    import json
    from collections import Counter

    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: no answer means unknown
        config = None
    if config is not None and config.node_group_configs:
        try:
            from ray._raylet import RAY_NODE_GROUP_KEY as key  # type: ignore[attr-defined]  # not in every Ray
        except ImportError:
            key = "ray.io/node-group"
        running = Counter(lab.get(key) for lab in labels)
        types = [{"name": g.name, "resources": {k: float(v) for k, v in g.resources.items()},
                  "max_count": int(g.max_count), "count": running[g.name]} for g in config.node_group_configs]
        return types, any(t["max_count"] == -1 or t["max_count"] > t["count"] for t in types)
    try:
        import os
        import time

        from ray._private import ray_constants
        from ray.experimental.internal_kv import _internal_kv_get

        # a head's monitor publishes its first status a few seconds after it starts: a job submitted right
        # after the cluster came up must not take an autoscaling cluster for a fixed one (a Ray this job
        # started itself, without RAY_ADDRESS, has no autoscaler: no wait)
        joined = bool(os.environ.get("RAY_ADDRESS"))
        deadline = time.monotonic() + (status_wait_s if joined else 0.0)
        while not (raw := _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)) and time.monotonic() < deadline:
            time.sleep(1.0)
        report = (json.loads(raw).get("autoscaler_report") or {}) if raw else {}
        if any(not str(t).startswith("node_") for t in (report.get("node_type_mapping") or {}).values()):
            return None, True
    except Exception:  # noqa: BLE001
        pass
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return None, bool(is_autoscaler_v2(fetch_from_server=True))
    except Exception:  # noqa: BLE001
        return None, False
