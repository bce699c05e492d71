"""``llmrec serve``: a spec as an HTTP service."""
