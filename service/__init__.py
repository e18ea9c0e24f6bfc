"""Thin shells over the library: the command line (and the HTTP API)."""
