"""PDFs and images in, the pages table out: rendering (``document``), inputs, the worker pool, the Ray Data run,
the books, and the page count of an input (``plan``). The ingest job runs it; the build calls it for PDF inputs."""
