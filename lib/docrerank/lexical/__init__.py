"""Stages of the dataset build: pure functions over pages and queries, plus model-free engines.

positives -> verify -> negatives (LLM or rules) -> dedup -> verify -> select -> rephrase; see build_run.py.
"""
