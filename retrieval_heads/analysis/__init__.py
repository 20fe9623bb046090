"""What is read from head scores:

    properties.py  sparsity, dynamic activation, the KV-head view, model comparison (pure)
    formats.py     head-score files in and out: run directories, the paper's JSON, CSV, TSV, duo
    exports.py     head scores for other KV-cache tools: DuoAttention pattern directories, HeadKV files
    report.py      the HTML report
    plots/         the figures

Imports only ``core`` and the package root.
"""
