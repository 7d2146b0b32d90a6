"""Several jobs run as one: ingest -> build -> mine -> analyse -> train -> evaluate, one Ray instance, step resume."""
