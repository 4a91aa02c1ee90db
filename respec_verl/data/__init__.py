"""Prompts generated locally (no data set is downloaded)."""
