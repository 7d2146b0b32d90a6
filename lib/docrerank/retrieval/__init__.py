"""First-stage retrieval and what ranks are judged by: ``retrievers`` (BM25, ColPali, TREC run files),
``metrics`` (trec_eval's definitions, paired tests), ``fusion`` (reranker + first-stage scores). Used by
evaluation, mining and the Reranker; heavy libraries are imported inside the functions."""
