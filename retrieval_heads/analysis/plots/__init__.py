"""Figures (matplotlib, PNG): head scores, NIAH heatmaps, masking curves, KV frontiers, task accuracy,
stability curves.

Each function takes data and an output path and returns the path; matplotlib is imported only
when a figure is drawn, and no pyplot state or global backend is touched.
"""

from .heads import activation_frequency, bucket_histogram, comparison_scatter, heatmap, layer_distribution
from .niah import mask_curve, niah_heatmap
from .stability import stability_plot
from .tasks import task_accuracy

__all__ = ["activation_frequency", "bucket_histogram", "comparison_scatter", "heatmap", "layer_distribution",
           "mask_curve", "niah_heatmap", "stability_plot", "task_accuracy"]
