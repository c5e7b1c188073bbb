"""Benchmarks of the hub against direct access, nginx and configurable-http-proxy (bench.run)."""
