"""Training configs and the single-process training loop pieces (optimizer, schedule, checkpoint state)."""
