"""The bertserve benchmark: raw engine limit vs the served model, in one run (see benchmarks/bench.py)."""
