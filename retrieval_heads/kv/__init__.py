"""The retrieval-head-aware KV cache, one module per job:

    cache.py       head-wise storage: full KV heads + sink/window streaming heads; shared cache machinery
    compressed.py  ragged storage: each KV head its own kept positions (token-selection policies)
    attention.py   the attention wrapper that runs the model's kernel per group of KV heads
    snapkv.py      observation-window attention captured during prefill; SnapKV token selection
    reconstruct.py KVzip's question-agnostic evidence: the attention each token gets while the context is re-read
    policy.py      plans: what each KV head keeps, every policy at a byte budget (numpy only)
    prefill.py     one prefill per prompt, compressed per condition, question, decode (kv-eval's engine)
    records.py     the files kv-eval writes next to each NIAH run
    evaluate.py    kv-eval: conditions, runs, summary rows, frontier
    press.py       a kvpress ``DuoAttentionPress`` reading our exported patterns (needs kvpress)
    lookup.py      lookup scores: the attention the question and the answer put on the needle
    restore.py     restore scores: the KV heads that, kept whole, bring a compressed cache's answer back

Nothing is imported here, so ``retrieval_heads.kv.press`` loads in kvpress's own environment.
"""
