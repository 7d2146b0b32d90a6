"""Model resolution (path, device, dtype, tokenizer: ``hub``), the one Qwen-VL input path (``qwen_vl``), shared-prefix
KV reuse (``prefix``), and sentence embeddings (``embed``)."""
