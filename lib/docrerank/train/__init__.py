"""Reranker training, one module per concern:

- ``config``: the job's typed config; ``examples``: examples Parquet -> packed whole groups; ``mix``: scanning,
  filtering and the deterministic mix of several example sets; ``collate``: groups -> micro-batches;
- ``backbones``: ``vlm`` (Qwen2-VL-family True/False logits) and ``text`` (a cross-encoder over the page text
  layer); ``loss``: pointwise and listwise losses; ``deepspeed_config``: the DeepSpeed config builder;
- ``dist``: torch.distributed helpers; ``step``: the engine, the optimizer step, validation and the loop (no Ray);
  ``local``: a run in this process; ``ray_train``: the Ray Train glue (checkpoints, resume); ``export``: the
  trained model.

Nothing heavy is imported at module import: torch, transformers, DeepSpeed and Ray are imported inside the
functions that need them, so ``from docrerank.train.config import TrainConfig`` stays cheap.
"""
