"""The plumbing of a run, apart from the experiment: its files, locks, signals, checkpoints and exit statuses."""
