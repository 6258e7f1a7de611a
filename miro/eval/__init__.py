"""Evaluation for any domain: the Benchmark interface, GenEval and prompt-file benchmarks, reward-control
sweeps, best-of-N, before/after comparison and the report (the shapes benchmark is miro.shapes')."""
