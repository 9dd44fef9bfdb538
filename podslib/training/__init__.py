"""Training: the step and the loop, the update, data parallel, warm-start, evaluation,
trackers and the progress bar."""
