"""The master process: listeners, worker processes, config ownership, admin API."""
