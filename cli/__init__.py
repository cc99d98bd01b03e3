"""Command line: typer commands, rendering, exit codes. The only package that prints."""
