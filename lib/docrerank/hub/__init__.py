"""Publishing to the Hugging Face Hub: a dataset build output or a trained reranker, with its card (``push.py``)."""
