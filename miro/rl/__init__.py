"""Chunk-level GRPO post-training of MIRO flow models (``python -m miro.rl +experiment=rl_shapes_chunk``)."""
