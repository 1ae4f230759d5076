"""The tools that launch, read, compare, plot and time runs of main_mlp.py: ``python -m tools.NAME``."""
