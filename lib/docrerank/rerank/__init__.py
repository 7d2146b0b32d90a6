"""The Reranker API (load, score, rank) and the batch reranking job."""
