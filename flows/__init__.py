"""Prefect flows: one deployable flow per file; they only compose tasks."""
