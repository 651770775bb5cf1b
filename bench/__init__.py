"""bench/run.py, the benchmark against the tools blockbridge replaces, and bench/soak.py."""
