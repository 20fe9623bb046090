"""Heads ablated, and what breaks:

    heads.py     which heads to ablate (``MaskPlan``: top-K, K random non-retrieval heads, a list)
    niah.py      needle-in-a-haystack evaluation, optionally with heads ablated
    sweep.py     NIAH score against the number of heads masked
    failures.py  why a NIAH answer is wrong
"""
