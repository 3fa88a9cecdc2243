"""Use cases: one function per command, run by the pipeline inside a unit of work."""
