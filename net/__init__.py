"""Rootless networking (issue 4)."""
