"""Figures (matplotlib, PNG): head scores, NIAH heatmaps, masking curves, KV frontiers, task accuracy.

Each function takes data and an output path and returns the path; matplotlib is imported only
when a figure is drawn, and no pyplot state or global backend is touched.
"""

from .heads import activation_frequency, bucket_histogram, comparison_scatter, heatmap, layer_distribution

__all__ = ["activation_frequency", "bucket_histogram", "comparison_scatter", "heatmap", "layer_distribution"]
