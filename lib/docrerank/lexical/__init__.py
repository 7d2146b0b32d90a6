"""Model-free, pure pieces of the dataset build and the mining filter: text utilities, the ``rules`` negatives
engine, the ``text`` judge, dedup and select (no models, no Ray)."""
