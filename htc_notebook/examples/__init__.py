"""Small real computations used by `htc demo`, the notebooks and the benchmarks."""
