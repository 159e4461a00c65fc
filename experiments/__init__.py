"""Experiments: training (`python -m experiments.train`), benchmarks and reports for xnorjax."""
