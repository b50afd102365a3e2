"""Benchmarks that print figures (not pass/fail tests): `python -m bench [NAME ...]`, each writing bench/results/."""
