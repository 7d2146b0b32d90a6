"""``jobs.train_reranker``'s typed config. Field docstrings are the documentation (``--help`` prints them)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from docrerank.core.config import Config
from docrerank.core.plan import PlanOptions
from docrerank.models.config import LoraConfig, ModelConfig


class DataSource(Config):
    """One component of the training mix: an ``examples/`` output of the dataset build (or of the mining job),
    optionally narrowed to some of its groups, taken by weight or by count."""

    path: str
    """Directory or URI holding examples Parquet files (``examples_schema()``); a group lies within one file."""

    weight: float | None = Field(None, gt=0)
    """Share of this source among the weighted sources (normalised over them), counted in groups. Default 1 when
    ``count`` is not set; setting both is an error."""

    count: int | None = Field(None, ge=1)
    """An absolute number of groups per epoch from this source instead of a weight (repeated, reshuffled, when
    larger than what the source holds). Counted sources take their counts first; the weighted sources share the
    rest of ``data.num_groups`` (or, without it, take as many as they hold at their weights)."""

    name: Optional[str] = None
    """Label in logs and in the realised mix (``mix.json``); default: the path. Needed when one path feeds several
    components (names must be unique)."""

    kinds: list[str] | None = None
    """Keep only groups with at least one negative of these kinds (``generated``, ``mined``); default: all."""

    attributes: list[str] | None = None
    """Keep only groups with at least one negative whose ``attribute`` is one of these (what a generated negative
    changed, e.g. ``[year, company, numeric_value, financial_metric, subject_metric, business_segment]`` for the
    finance set); default: all."""

    exclude_attributes: list[str] | None = None
    """Drop groups with any negative whose ``attribute`` is one of these (the complement of ``attributes``: one
    examples directory split into its finance and its general part); default: drop none."""

    @model_validator(mode="after")
    def _check(self):
        if self.count is not None and self.weight is not None:
            raise ValueError(f"set weight or count, not both (got weight={self.weight}, count={self.count})")
        for key in ("kinds", "attributes", "exclude_attributes"):
            value = getattr(self, key)
            if value is not None and not value:
                raise ValueError(f"{key}: expected a non-empty list or null, got []")
        if self.kinds and "positive" in self.kinds:
            raise ValueError(f"kinds: filters the negatives' kinds (generated, mined), got {self.kinds}")
        both = set(self.attributes or ()) & set(self.exclude_attributes or ())
        if both:
            raise ValueError(f"attributes and exclude_attributes both name {sorted(both)}")
        return self

    @property
    def label(self) -> str:
        """``name``, else the path."""
        return self.name or self.path

    @property
    def mix_weight(self) -> float:
        """The weight used for mixing (1 when unset); meaningless for counted sources."""
        return 1.0 if self.weight is None else self.weight

    @property
    def filtered(self) -> bool:
        """Whether any group filter is set."""
        return any(v is not None for v in (self.kinds, self.attributes, self.exclude_attributes))


class RankingValidationConfig(Config):
    """Validation by retrieval quality: NDCG@k of the reranked candidates of held-out queries, every
    ``data.val_every_steps`` steps, before the first step and at the end; the best step's weights are exported."""

    path: str
    """A candidates table (Parquet: ``query_id``, ``query``, ``page_id``, ``text``, ``relevance``; optional ``image``,
    ``image_format``, ``first_score``; in first-stage order; ``docrerank.eval.candidates`` writes one) or a
    dataset build's output, whose held-out positives are asked of every page of their part's documents."""

    part: Literal["all", "validation", "test"] = "validation"
    """Build outputs: which held-out documents (a seeded hash splits them in two; the evaluation's ``part``):
    ``validation`` (choose here, and choose fusion weights), ``test`` (report only), ``all``."""

    questions: Optional[str] = None
    """Build outputs: a questions file (JSONL, the ``positives_file`` layout, optionally with ``relevant`` pages)
    whose questions about the part's documents are the queries, instead of the held-out positives."""

    top_k: Optional[int] = Field(None, ge=1)
    """Candidates tables: rerank each query's first ``top_k`` candidates; default: all of them."""

    k: int = Field(5, ge=1)
    """The cutoff of NDCG@k (the primary metric of the evaluation: 5)."""

    max_queries: int = Field(64, ge=1)
    """At most this many queries (a seeded sample) keep validation cheap."""

    keep_best: bool = True
    """Export the weights of the best validated step (step 0 included: the untrained model), not the last."""

    batch_pairs: int = Field(32, ge=1)
    """(query, page) pairs per forward pass."""

    seed: int = 0
    """Seed of the document split into parts and of the query sample."""


class DataConfig(Config):
    """Examples, the mix and batching."""

    sources: list[DataSource] = Field(min_length=1)
    """Example sets to mix, e.g. ``[{path: gen/examples, weight: 1}, {path: mined/examples, weight: 1}]``; a
    source may filter groups (``kinds``, ``attributes``) and take a ``count`` of groups instead of a weight."""

    validation: Optional[str] = None
    """Examples directory or URI held out for validation (pairwise accuracy, loss); none: no validation."""

    val_max_groups: int = Field(512, ge=1)
    """At most this many validation groups are scored (the first ones, in file order)."""

    val_every_steps: int = Field(0, ge=0)
    """Validate every N optimizer steps (0: only at the end)."""

    ranking_validation: Optional[RankingValidationConfig] = None
    """Also validate by NDCG@k of reranked held-out candidates and keep the best step (see its keys); none: the
    last step's weights are exported."""

    num_groups: Optional[int] = Field(None, ge=1)
    """Groups per epoch of the whole mix: the counted sources' counts plus what the weighted sources share by
    weight. Default: the counts plus as many groups as the weighted sources allow at their weights without
    repeating any; a larger number repeats (reshuffled) groups of the smaller sources. With only counted sources
    it must equal the sum of the counts (or be left unset)."""

    groups_per_device: int = Field(8, ge=1)
    """Groups per micro-batch on each worker (8 groups of 1 positive + 3 negatives = 32 examples)."""

    chunk_groups: int = Field(16, ge=1)
    """Consecutive groups of one file read by one Ray Data task; also the granularity of the mix."""

    read_cpus: float = Field(0.5, gt=0)
    """CPUs reserved by each Ray Data read task."""

    @model_validator(mode="after")
    def _check_mix(self):
        labels = [s.label for s in self.sources]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise ValueError(f"sources: names must be unique, got {dup} more than once (set sources[i].name)")
        counted = sum(s.count for s in self.sources if s.count is not None)
        weighted = sum(1 for s in self.sources if s.count is None)
        if self.num_groups is not None:
            if not weighted and self.num_groups != counted:
                raise ValueError(f"num_groups={self.num_groups}: every source has a count, so it must equal their "
                                 f"sum {counted} (or be left unset)")
            if weighted and self.num_groups - counted < weighted:
                raise ValueError(f"num_groups={self.num_groups} leaves {self.num_groups - counted} groups for the "
                                 f"{weighted} weighted source(s) after the counts ({counted})")
        return self


class LossConfig(Config):
    """The training objective on scores s = logit(True) - logit(False) in float32."""

    kind: Literal["pointwise", "listwise"] = "pointwise"
    """pointwise: 2-way cross-entropy per example (weighted); listwise: softmax over each group of 1 positive
    and its k negatives, cross-entropy on the positive."""

    positive_weight: float = Field(3.0, gt=0)
    """pointwise: weight of a positive example relative to a negative (3 = one positive per three negatives)."""


class OptimConfig(Config):
    """AdamW with linear warm-up then linear decay (the paper: lr 1e-4, 100 warm-up steps, 1 epoch)."""

    lr: float = Field(1e-4, gt=0)
    """Peak learning rate."""

    min_lr: float = Field(0.0, ge=0)
    """Learning rate the linear decay heads to (reached at the end of the run)."""

    warmup_steps: int = Field(100, ge=0)
    """Optimizer steps of linear warm-up from lr/warmup_steps to lr (at most half of the run)."""

    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""

    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""

    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""

    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this (0: no clipping)."""

    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each worker."""

    epochs: int = Field(1, ge=1)
    """Passes over the mix (each reshuffled)."""

    max_steps: Optional[int] = Field(None, ge=1)
    """Stop after this many optimizer steps (also the length of the decay); default: the epochs' length."""


class DeepSpeedConfig(Config):
    """DeepSpeed ZeRO data parallelism."""

    enabled: bool = True
    """Train through DeepSpeed; false: a plain torch AdamW loop (one worker only)."""

    stage: Literal[2, 3] = 2
    """ZeRO stage: 2 shards optimizer state and gradients, 3 also the weights."""

    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Mixed precision; auto = bf16 on GPU, fp32 on CPU."""

    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory (slower, for big models on small GPUs)."""

    offload_params: bool = False
    """ZeRO-3: keep weights in CPU memory."""

    bucket_size: int = Field(200_000_000, ge=1_000_000)
    """Elements per all-reduce / reduce-scatter bucket."""

    optimizer: Literal["auto", "fused", "torch"] = "auto"
    """Adam implementation on GPU: ``fused`` (DeepSpeed's FusedAdam, a CUDA op that is prebuilt or JIT-compiled
    with nvcc), ``torch`` (torch AdamW), or ``auto``: fused when its op is prebuilt or can be compiled on the worker
    (nvcc and ninja present), else torch; decided on each worker at start and logged. CPU runs use torch AdamW."""


class ScalingConfig(Config):
    """Ray Train workers."""

    use_ray: bool = True
    """false: train in this process without Ray (one worker, no checkpoints; for machines without Ray)."""

    num_workers: int = Field(1, ge=1)
    """Training workers (one GPU each on GPU clusters)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: cuda when the cluster has GPUs, else cpu."""

    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs Ray reserves for each worker; leave some for Ray Data's read tasks (``data.read_cpus``)."""

    threads: int = Field(0, ge=0)
    """torch threads of each CPU worker (also without Ray); 0: ``cpus_per_worker`` rounded up. May exceed the
    reservation, e.g. 2 threads on a 1.5-CPU reservation so that training uses both cores of a 2-core machine."""

    max_failures: int = Field(3, ge=-1)
    """Worker failures to recover from (from the last checkpoint) before the run fails; -1: unlimited."""


class CheckpointConfig(Config):
    """Checkpoints (for resuming) on any pyarrow filesystem."""

    every_steps: int = Field(500, ge=1)
    """Checkpoint every N optimizer steps (and always at the end)."""

    num_to_keep: int = Field(2, ge=1)
    """Checkpoints kept (oldest deleted)."""


class TrainConfig(Config):
    """``jobs.train_reranker``: examples in, a reranker (LoRA adapter + merged model) out."""

    output: str
    """Directory or URI: checkpoints/, model/adapter, model/merged, metrics.jsonl, tensorboard/, _meta/."""

    name: str = "reranker"
    """Run name; rerunning with the same output and name resumes from its last checkpoint."""

    data: DataConfig
    """Examples and batching."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The scoring model."""

    lora: LoraConfig = Field(default_factory=LoraConfig)
    """LoRA settings."""

    loss: LossConfig = Field(default_factory=LossConfig)
    """Training objective."""

    optim: OptimConfig = Field(default_factory=OptimConfig)
    """Optimizer and schedule."""

    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    """DeepSpeed ZeRO."""

    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    """Workers."""

    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpointing."""

    log_every_steps: int = Field(1, ge=1)
    """Write metrics every N optimizer steps."""

    seed: int = 0
    """Seed of the shuffle, the mix and the head initialisation."""

    export: bool = True
    """Write model/adapter and model/merged at the end."""
    plan: PlanOptions = Field(default_factory=PlanOptions)
    """What ``--plan`` and the start-of-job checks assume (throughput figures, page count)."""

    @model_validator(mode="after")
    def _check(self):
        if not self.scaling.use_ray and self.scaling.num_workers > 1:
            raise ValueError(f"scaling.use_ray=false trains one worker, got scaling.num_workers="
                             f"{self.scaling.num_workers}")
        if not self.deepspeed.enabled and self.scaling.num_workers > 1:
            raise ValueError(f"deepspeed.enabled=false trains on one worker, got scaling.num_workers="
                             f"{self.scaling.num_workers}")
        if self.deepspeed.offload_params and self.deepspeed.stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.stage=3, got stage 2")
        if self.model.backbone == "text" and self.model.seq_len > 512:
            raise ValueError(f"model.max_seq_len: the text backbone holds at most 512 tokens, got {self.model.seq_len}")
        if self.model.text_scoring == "biencoder" and self.model.backbone != "text":
            raise ValueError(f"model.text_scoring=biencoder needs backbone text, got {self.model.backbone}")
        if self.model.text_scoring == "biencoder" and self.model.max_windows > 1:
            raise ValueError(f"model.max_windows: the bi-encoder embeds the page truncated to max_seq_len (as the "
                             f"zero-shot encoder does), got {self.model.max_windows}")
        if self.model.backbone == "vlm" and self.model.max_windows > 1:
            raise ValueError(f"model.max_windows: windows split the page text of the text backbone, got "
                             f"{self.model.max_windows} with backbone vlm")
        if (self.model.backbone == "vlm" and self.model.shared_prefix
                and (self.model.attn_implementation or "").startswith("flash_attention")):
            raise ValueError(f"model.shared_prefix needs an attention kernel that takes a mask (sdpa, eager), got "
                             f"model.attn_implementation={self.model.attn_implementation}; set "
                             f"model.shared_prefix=false or another kernel")
        if "{query}" not in self.model.prompt:
            raise ValueError("model.prompt: expected a template containing '{query}'")
        return self
