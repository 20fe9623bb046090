"""From a sweep to records, one module per job:

    grid.py         ``SweepConfig``: lengths x depths x needles, blocks, shards; ``prepare`` builds the prompts
    haystack.py     needles, haystacks and the prompt around them
    sources/        named data sources (Paul Graham, RULER, SQuAD, HotpotQA)
    runner.py       runs a grid through the engine under the hook, one record per sample
    rundir.py       run directories: records, config, resume
    distributed.py  data-parallel shards under torchrun or accelerate
    stability.py    bootstrap stability of the top heads, and the stop rule
    merge.py        shard directories into one (the command's finalizer is passed in)

Imports only ``core`` and the package root: a sweep runs no experiment.
"""
