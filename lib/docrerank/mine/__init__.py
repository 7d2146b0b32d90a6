"""Document-mined negatives: retriever top-N, positive excluded, seeded sample, false-negative filter."""
