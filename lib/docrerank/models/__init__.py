"""Model resolution (path, device, dtype), the one Qwen-VL input path, and sentence embeddings."""
