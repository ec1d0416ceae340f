"""Statistics: the shared-memory segment, its readers and exporters."""
