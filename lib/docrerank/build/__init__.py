"""The dataset build: positives, two-prompt verification, negatives, selection, outputs."""
