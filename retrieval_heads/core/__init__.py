"""What every command stands on, one module per job:

    hooks.py        the attention hook: probe (top-1 attended key per head) and ablation (head masks)
    layout.py       which layers attend, and how many heads each has
    engine.py       prefill, prefix reuse and batched greedy decoding
    scoring.py      the paper's per-sample retrieval score, ROUGE-1 recall and string match
    head_scores.py  ``HeadScores``: per-sample scores of every head, aggregated

Imports only ``errors`` and ``io`` from the package root (see tests/test_layout_layers.py).
"""
