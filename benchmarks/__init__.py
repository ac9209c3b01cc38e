"""Benchmarks: `make bench`, or `python -m benchmarks.train|umap|pipeline`. Figures go in BENCHMARKS.md."""
