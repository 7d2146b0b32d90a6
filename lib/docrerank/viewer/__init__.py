"""A static HTML viewer of a dataset build: pages, their positives and every negative candidate with its verdict."""
