"""docrerank."""
