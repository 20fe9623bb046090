"""Downstream tasks under head masking: ``suites.py`` (the items), ``run.py`` (prompts, decoding, scoring)."""
