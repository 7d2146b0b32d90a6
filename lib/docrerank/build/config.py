"""``jobs.build_dataset``'s typed config. Field docstrings are the documentation (``--help`` prints them)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional, Union

from pydantic import Field, model_validator

from docrerank.core.config import Config
from docrerank.core.plan import PlanOptions
from docrerank.engines.config import EngineConfig
from docrerank.lexical.rules import ATTRIBUTES
from docrerank.render.config import IngestOptions


class UserAttributeConfig(Config):
    """An attribute of your domain that negatives may change (attributes mode)."""

    name: str = Field(min_length=1)
    """Short name recorded with every negative that changed it (e.g. ``product``)."""
    description: str = ""
    """What the attribute is, for the LLM prompt (e.g. "the product model a question is about")."""
    examples: list[str] = Field(min_length=2)
    """Values it takes; the rules engine swaps one for another, the LLM sees them as examples."""


class PositivesConfig(Config):
    """Stage 1: questions each page answers."""

    engine: Union[Literal["given"], EngineConfig] = "given"
    """``given``: only questions supplied with the input (positives_file or a query-page set); or an engine
    config of a VLM that writes questions from the page image."""
    num_candidates: int = Field(4, ge=1, le=50)
    """Questions asked of the VLM per page."""
    prompt: str = "positives"
    """Prompt template name (shipped) or path to your own YAML."""
    temperature: float = Field(0.7, ge=0)
    """Sampling temperature for question writing."""
    max_tokens: int = Field(512, ge=16)
    """Output budget of one positives request."""
    sample_questions: bool = True
    """``sample:`` inputs: the corpus's own questions are the given positives. False: a VLM engine writes every
    page's positives, as it does on raw PDFs (``build_vllm_tiny.yaml``)."""


class VerifyConfig(Config):
    """Stages 2 and 4: two judge prompts per candidate against the page image."""

    engine: Union[Literal["text"], EngineConfig] = "text"
    """``text``: the model-free text-layer judge; or an engine config of a VLM judge."""
    prompt: str = "verify"
    """Prompt template with prompt_a and prompt_b."""
    threshold: Optional[float] = Field(None, gt=0, lt=1)
    """p(answerable) threshold: positives need both >= it, negatives both < it. Default: 0.5 for a model judge;
    for the text judge its measured operating points, 0.5 for positives and for negatives (README, "The
    model-free engines on real documents")."""
    max_positives: int = Field(1, ge=1)
    """Generated positives kept per page (the most confidently answerable first); given positives are all kept."""
    prefilter: Literal["none", "text"] = "text"
    """Before a model judge, reject negatives the text layer already shows answerable (cheap, saves calls)."""
    reverify_given: bool = False
    """Judge given positives too (positives_file, query-page sets) and drop those the judge does not find
    answerable. Off by default: given positives are labels and start at the negatives, as in the paper (the
    text judge rejects about half of the human-labelled answer pages of real documents, see the README)."""


class NegativesConfig(Config):
    """Stage 3: rewrite each positive into hard negatives."""

    engine: Union[Literal["rules"], EngineConfig] = "rules"
    """``rules``: model-free attribute perturbation; or an engine config of a (text) LLM."""
    mode: Literal["general", "attributes"] = "attributes"
    """``general``: different information on the same topic; ``attributes``: change exactly one attribute."""
    num_candidates: int = Field(12, ge=1, le=64)
    """Rewrites per positive (the paper: 12)."""
    attributes: list[str] = Field(default_factory=lambda: list(ATTRIBUTES))
    """Attributes to change in attributes mode: the paper's six finance attributes (year, company,
    numeric_value, financial_metric, subject_metric, business_segment) and place, person, product."""
    user_attributes: list[UserAttributeConfig] = Field(default_factory=list)
    """Your own attributes, added to ``attributes``."""
    near_duplicate_threshold: float = Field(0.92, gt=0, le=1)
    """Character-trigram cosine at or above which two rewrites count as duplicates."""
    temperature: float = Field(0.8, ge=0)
    """Sampling temperature of the LLM rewriter."""
    max_tokens: int = Field(1024, ge=16)
    """Output budget of one rewrite request."""
    general_prompt: str = "negatives_general"
    """Prompt template of general mode."""
    attributes_prompt: str = "negatives_attributes"
    """Prompt template of attributes mode; its ``attributes`` mapping describes each attribute to the LLM."""

    @model_validator(mode="after")
    def _known_attributes(self):
        if self.engine == "rules":
            names = set(ATTRIBUTES) | {a.name for a in self.user_attributes}
            unknown = [a for a in self.attributes if a not in names]
            if unknown:
                raise ValueError(f"attributes: the rules engine does not know {unknown}; expected names from "
                                 f"{sorted(names)} (or add them as user_attributes)")
        return self


class SelectConfig(Config):
    """Stage 5: keep k verified negatives per positive."""

    k: int = Field(3, ge=1)
    """Negatives per positive in the output (the paper: 3)."""
    strategy: Literal["random", "hardest", "diverse"] = "random"
    """random (seeded), hardest (most similar to the positive), diverse (greedy max-min)."""
    min_negatives: int = Field(1, ge=0)
    """Positives with fewer verified negatives than this are dropped (counted); between this and k they are
    kept with what they have."""


class RephraseConfig(Config):
    """Stage 6 (optional): rephrase some positives to use fewer of the page's words."""

    engine: Union[Literal["none"], EngineConfig] = "none"
    """``none`` disables rephrasing; else an engine config of a (text) LLM."""
    fraction: float = Field(0.5, ge=0, le=1)
    """Share of kept positives to rephrase (chosen by a seeded hash of the query)."""
    prompt: str = "rephrase"
    """Prompt template."""
    temperature: float = Field(0.7, ge=0)
    """Sampling temperature of the rephrasing LLM."""
    max_tokens: int = Field(128, ge=16)
    """Output budget of one rephrase request."""


class BuildConfig(Config):
    """``jobs.build_dataset``: pages in, verified positive and hard negative queries and training examples out."""

    # a rerun keeps the pages an earlier run finished (page_status/): settings that change how a page is built
    # must match that run's (``core.rerun``); these do not (``input``: more documents, built the same way)
    resume_marker: ClassVar[Optional[str]] = "page_status"
    run_only_keys: ClassVar[tuple[str, ...]] = (
        "output", "input", "limit_pages", "num_workers", "pages_per_batch", "pages_per_shard", "plan", "plan.*",
        "viewer", "ingest.num_workers", "ingest.pages_per_task", "ingest.worker_memory_mb", "ingest.task_timeout_s",
        "ingest.probe_local_max", "ingest.resume", "*.engine.ray", "*.engine.ray.*")

    output: str
    """Output directory or URI (pages/, queries/, examples/, export/, quarantine/, stats.json, card.md)."""
    input: str | None = None
    """PDFs to ingest first (anything ``jobs.ingest`` accepts, ``sample:`` included)."""
    pages: str | None = None
    """An existing pages table (directory of Parquet) instead of ``input``."""
    query_pages: str | None = None
    """A query-page set instead (Parquet: ``image`` plus ``query`` or ``positive_queries``, optional ``answer``):
    its queries are the positives and the build starts at the negatives."""
    positives_file: str | None = None
    """Given positives for ``input``/``pages``: JSONL or Parquet rows with ``question`` (optional ``answer``) and
    either ``page_id`` or ``doc`` (file name) + ``page_number``. ``sample:`` inputs use the corpus's own."""
    ingest: IngestOptions = Field(default_factory=IngestOptions)
    """Ingest options when ``input`` is given."""
    positives: PositivesConfig = Field(default_factory=PositivesConfig)
    """Stage 1."""
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    """Stages 2 and 4."""
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    """Stage 3."""
    select: SelectConfig = Field(default_factory=SelectConfig)
    """Stage 5."""
    rephrase: RephraseConfig = Field(default_factory=RephraseConfig)
    """Stage 6."""
    seed: int = 0
    """Seed of every random choice (sampling seeds are derived from it and the page id)."""
    holdout_fraction: float = Field(0.0, ge=0, lt=1)
    """Share of documents (chosen by a seeded hash of the document id, so pages of one document never straddle
    the split) whose examples go to ``examples_heldout/`` instead of ``examples/``: validation and evaluation
    data the reranker never trains on."""
    pages_per_batch: int = Field(16, ge=1)
    """Pages per batch through the stages (all checks of a page stay in one batch)."""
    pages_per_shard: int = Field(64, ge=1)
    """Pages per output shard."""
    limit_pages: int | None = Field(None, ge=1)
    """Process at most this many pages (a quick look before a full run)."""
    num_workers: int | None = Field(None, ge=1)
    """Workers of the model-free stages; default: the cluster's CPUs."""
    plan: PlanOptions = Field(default_factory=PlanOptions)
    """What ``--plan`` and the start-of-job checks assume (throughput figures, page count)."""
    viewer: bool = True
    """Write the dataset viewer at the end, ``<output>/viewer/index.html`` (a static page a browser opens from disk;
    ``jobs.view_dataset`` writes it for any build output)."""

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("input", "pages", "query_pages") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"expected exactly one of input, pages, query_pages; got {given or 'none'}")
        sample = (self.input or "").startswith("sample:") and self.positives.sample_questions
        if self.positives.engine == "given" and not (self.query_pages or self.positives_file or sample):
            raise ValueError("positives.engine: 'given' needs positives: set positives_file, use query_pages, "
                             "or configure a VLM engine")
        return self
