"""Offline evaluation: ranking metrics, and running specs over the test cases of a dataset (llmrec eval)."""
