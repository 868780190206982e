"""Files: the model file, teacher weight files, anomalib's state dicts, strict state-dict
reading, and atomic writes (a failed write never replaces a good file)."""
