"""The engine contract (options/reports) and its local implementation."""
