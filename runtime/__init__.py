"""Low-level process work: syscalls, the per-user namespace holder, (later) the OCI runtime and supervisor."""
