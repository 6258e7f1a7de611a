"""Reward parity harness (``make parity``): MIRO's reward loaders against the original packages.

This package must import in the originals' venvs too (torch, numpy, PIL only): nothing here imports
``miro`` except :mod:`parity.ours`, which runs in MIRO's environment.
"""
