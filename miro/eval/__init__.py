"""Evaluation: the GenEval-style shapes benchmark, reward control sweeps, best-of-N, and the report."""
