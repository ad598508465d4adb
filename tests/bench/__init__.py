"""The benchmarks' bookkeeping (bench/results.py): regressions flagged, the README's figures the recorded ones."""
