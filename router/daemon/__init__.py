"""The daemon: assembly of the router, its control socket, status, metrics, entry point."""
