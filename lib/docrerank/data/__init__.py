"""Example sets as training and analysis read them: ``examples`` (examples Parquet -> packed whole groups),
``mix`` (scanning, filtering and the deterministic mix of several example sets), ``collate`` (groups ->
micro-batches), ``heldout`` (the held-out split's two parts, questions files). Pure Python + pyarrow."""
