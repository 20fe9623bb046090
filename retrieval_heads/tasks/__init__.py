"""Downstream tasks under head masking: ``suites.py`` (the items), ``run.py`` (prompts, decoding, scoring),
``contrast.py`` (top-K against random-K on the same items)."""
