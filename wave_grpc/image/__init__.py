"""Image values, parsed once and validated at construction, and the pure rewrite (no I/O)."""
