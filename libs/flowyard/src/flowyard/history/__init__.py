"""Run history, logs, graphs, CSV export, analytics and retention: the pure parts (the
queries are in :mod:`flowyard.adapters.history`)."""
