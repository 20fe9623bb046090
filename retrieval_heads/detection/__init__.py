"""Retrieval-head detection: ``detect.py`` (``run_detection``, the paper's score over a sweep)."""
