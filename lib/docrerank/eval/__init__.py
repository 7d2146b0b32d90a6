"""Evaluation: load benchmarks (BEIR layout, dataset build outputs), first-stage retrieval, metrics, reports.

Import-light: every heavy library (pyarrow, bm25s, scipy, matplotlib, colpali-engine) is imported inside the
function that needs it.
"""
