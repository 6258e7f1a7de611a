"""Networks: the reward-conditioned DiT (a transformer core between image ends), its conditioning
embedders, and text encoders."""

from miro.models.dit import (
    DIT_SIZES,
    ConvLevels,
    ConvStemHead,
    DiTParams,
    DiTSize,
    ImageEnds,
    MiroDiT,
    PatchEnds,
)
from miro.models.embedders import FourierFeatures, RewardEmbedder, TimestepEmbedder
from miro.models.text import HFTextEncoder, MiniLMTextEncoder, TextEncoder, WordTextEncoder

__all__ = [
    "DIT_SIZES",
    "ConvLevels",
    "ConvStemHead",
    "DiTParams",
    "DiTSize",
    "FourierFeatures",
    "HFTextEncoder",
    "ImageEnds",
    "MiniLMTextEncoder",
    "MiroDiT",
    "PatchEnds",
    "RewardEmbedder",
    "TextEncoder",
    "TimestepEmbedder",
    "WordTextEncoder",
]
