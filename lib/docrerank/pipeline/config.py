"""``jobs.pipeline``'s typed config: one config per step, each the step's own job config.

A step's section is the job's config inline, or ``config: FILE`` (a job YAML, e.g. ``jobs/configs/build_local.yaml``)
with keys that override the file's::

    steps: [build, mine, analyse, train, evaluate]
    build: {config: jobs/configs/build_local.yaml, select: {k: 4}}
    mine: {config: jobs/configs/mine_local.yaml}

Command-line overrides reach into the steps: ``build.select.k=4``, ``train.optim.epochs=2``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from docrerank.analysis.config import AnalyseConfig
from docrerank.build.config import BuildConfig
from docrerank.core.config import Config, read_yaml
from docrerank.eval.config import EvalConfig
from docrerank.mine.config import MineConfig
from docrerank.render.config import IngestConfig
from docrerank.train.config import TrainConfig

STEPS = ("ingest", "build", "mine", "analyse", "train", "evaluate")
StepName = Literal["ingest", "build", "mine", "analyse", "train", "evaluate"]


def merge(base: Any, over: Any) -> Any:
    """``over`` laid over ``base``: mappings merge key by key (recursively), anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return over


def expand_step(name: str, section: Any) -> Any:
    """A step section with ``config: FILE``: the file's mapping with the section's other keys laid over it."""
    if not isinstance(section, dict) or "config" not in section:
        return section
    path = section["config"]
    if not isinstance(path, str) or not path:
        raise ValueError(f"{name}.config: expected the path of a {name} job YAML file, got {path!r}")
    try:
        loaded = read_yaml(path) or {}
    except OSError as e:
        raise ValueError(f"{name}.config: cannot read {path!r} ({e.strerror or e})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{name}.config: {path!r} holds a {type(loaded).__name__}, expected a mapping of config keys")
    return merge(loaded, {k: v for k, v in section.items() if k != "config"})


class PipelineConfig(Config):
    """``jobs.pipeline``: several jobs run as one, in order, on one Ray instance, resumable step by step."""

    steps: Optional[list[StepName]] = None
    """The steps to run, a contiguous part of ingest, build, mine, analyse, train, evaluate (in that order);
    default: every step that has a config."""

    rerun: list[StepName] = Field(default_factory=list)
    """Steps to run again although finished with the same config (every later step then runs again too)."""

    ingest: Optional[IngestConfig] = None
    """The ``jobs.ingest`` step (PDFs -> pages/); ``config: FILE`` loads a job YAML, other keys override it."""

    build: Optional[BuildConfig] = None
    """The ``jobs.build_dataset`` step; ``config: FILE`` loads a job YAML, other keys override it."""

    mine: Optional[MineConfig] = None
    """The ``jobs.mine_negatives`` step; ``config: FILE`` loads a job YAML, other keys override it."""

    analyse: Optional[AnalyseConfig] = None
    """The ``jobs.analyse_negatives`` step; ``config: FILE`` loads a job YAML, other keys override it."""

    train: Optional[TrainConfig] = None
    """The ``jobs.train_reranker`` step; ``config: FILE`` loads a job YAML, other keys override it."""

    evaluate: Optional[EvalConfig] = None
    """The ``jobs.evaluate`` step; ``config: FILE`` loads a job YAML, other keys override it."""

    @model_validator(mode="before")
    @classmethod
    def _expand_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: (expand_step(k, v) if k in STEPS else v) for k, v in data.items()}

    @model_validator(mode="after")
    def _check_steps(self):
        chosen = self.steps if self.steps is not None else [s for s in STEPS if getattr(self, s) is not None]
        if not chosen:
            raise ValueError(f"steps: no step has a config; expected at least one of {', '.join(STEPS)}")
        idx = [STEPS.index(s) for s in chosen]
        if idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError(f"steps: got [{', '.join(chosen)}]; expected a contiguous part of "
                             f"{', '.join(STEPS)}, in that order")
        missing = [s for s in chosen if getattr(self, s) is None]
        if missing:
            raise ValueError(f"steps: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no config "
                             f"(set {missing[0]}: {{config: FILE}} or its keys)")
        stray = [s for s in self.rerun if s not in chosen]
        if stray:
            raise ValueError(f"rerun: got {stray}, not among the steps run ({', '.join(chosen)})")
        return self

    @property
    def chosen(self) -> list[str]:
        """The steps that run, in order."""
        return list(self.steps) if self.steps is not None else [s for s in STEPS if getattr(self, s) is not None]

    @property
    def output(self) -> str | None:
        """Where the pipeline's own records go (``_meta/pipeline.json``, ``_logs/``): the first step's output."""
        for s in self.chosen:
            out = getattr(getattr(self, s), "output", None)
            if out:
                return out
        return None
