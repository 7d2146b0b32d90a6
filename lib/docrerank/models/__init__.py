"""Models shared by training and inference: model resolution (path, device, dtype, tokenizer: ``hub``), the one
Qwen-VL input path (``qwen_vl``), shared-prefix KV reuse (``prefix``), sentence embeddings (``embed``), the model
config (``config``), the scorers (``backbones``), long-page windows (``windows``), and the Reranker API
(``reranker``, ``pages``, ``text``)."""
