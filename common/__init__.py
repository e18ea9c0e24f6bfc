"""Helpers every room may use: atomic files and locks, the host's core lock, strict validation. Torch-free."""
