"""Scripts run inside the originals' venvs (``.parity/venv-*``): each builds the original's own model
classes at a tiny size with seeded random weights, saves them in the official checkpoint layout, and
scores the shared inputs with the original's own preprocessing and scoring code."""
