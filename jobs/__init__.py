"""Thin entry points: ``python -m jobs.<name> --config FILE key=value ...``."""
