"""Core machinery every layer uses: configs, schemas and ids, storage, runtime, isolation, Ray Data glue."""
