"""Recommender node types for the quickstart (placeholder until written)."""
