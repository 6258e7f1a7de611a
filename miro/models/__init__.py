"""Networks: the reward-conditioned DiT, its conditioning embedders, and text encoders."""

from miro.models.dit import DIT_SIZES, DiTSize, MiroDiT
from miro.models.embedders import FourierFeatures, RewardEmbedder, TimestepEmbedder
from miro.models.text import HFTextEncoder, MiniLMTextEncoder, TextEncoder, WordTextEncoder

__all__ = [
    "DIT_SIZES",
    "DiTSize",
    "FourierFeatures",
    "HFTextEncoder",
    "MiniLMTextEncoder",
    "MiroDiT",
    "RewardEmbedder",
    "TextEncoder",
    "TimestepEmbedder",
    "WordTextEncoder",
]
