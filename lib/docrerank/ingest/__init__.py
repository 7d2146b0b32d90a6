"""PDFs and images in, the pages table out: rendering, inputs, the Ray Data job, the books."""
