"""The ingest job: PDFs and images in, the pages table out (the work lives in ``docrerank.render``)."""
