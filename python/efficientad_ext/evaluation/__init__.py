"""Evaluation on a labelled test set: metrics (:mod:`.metrics`), heatmap PNGs
(:mod:`.visualize`) and the two put together (:mod:`.evaluator`)."""
