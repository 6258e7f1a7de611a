"""The reward-conditioned flow-matching DiT: a transformer core between two image ends.

**The transformer core** (DiT): patches of a feature map are tokens processed by adaLN-Zero transformer
blocks. Conditioning enters two ways:

* **flow time -> adaLN.** The timestep embedding (plus, by default, a pooled caption embedding) produces
  per-block shift/scale/gate vectors. The gates and the output layer start at zero, so every block starts
  as the identity and the network's first prediction is exactly 0: training begins from a calm,
  well-conditioned function instead of a random one.
* **caption + rewards -> cross-attention.** The conditioning sequence is the projected caption tokens
  followed by one token per reward (:class:`~miro.models.embedders.RewardEmbedder`). Image tokens
  attend to it in every block.

Why cross-attention and not joint (MM-DiT style) attention: the conditioning tokens are a fixed context
(frozen or separately trained text features, and reward levels), so there is nothing to gain from
updating them layer by layer, and doing so would cost a second MLP stream. With cross-attention the image
stream's self-attention cost does not grow with the caption length (77 T5 tokens would more than double
it at 64 image tokens), padding is a plain key mask, and each reward stays exactly one token a block can
look up. The pooled caption in adaLN is cheap and gives every block a global summary of the prompt
(colour, count) without it having to route through attention first; it is what small models learn first.
``pooled_rewards`` does the same for the reward tokens (their mean joins the adaLN vector): many rewards
describe global properties (sharpness, noise, colourfulness) that modulation expresses directly, while
a token must first be found by attention. Off by default (MIRO uses tokens only); the demo measures it.

**The image ends** (:class:`ImageEnds`) turn the image into the map the core cuts into patches and the
core's unpatchified output back into a velocity. One of three, chosen by :class:`DiTParams`:

* :class:`PatchEnds` (the plain DiT, for VAE latents): the core patchifies the input itself and its
  output is the velocity.
* :class:`ConvLevels` (``unet_channels``, e.g. ``[32, 64]``; the embedded demo's): the network becomes an
  hourglass, as pixel-space transformers (U-ViT, HDiT) are: residual 3x3 conv blocks at full resolution,
  then at half resolution and so on, each modulated (FiLM) by the same adaLN vector as the transformer
  blocks; the core runs on patches of the lowest level, and the way back up mirrors the way down with a
  skip from each level. The core keeps what it is good at (relations between objects, the caption and
  reward tokens through cross-attention); the conv levels draw outlines. Measured on the shapes world
  (docs/demo.md): the patch transformer alone learns the colour word within a thousand steps but draws
  the same blob for every shape for thousands more, while conditioned conv levels draw the named shape
  early, because an edge is a local, translation-equivariant function a conv computes directly and a
  patch token must learn separately for every sub-patch position.
* :class:`ConvStemHead` (``conv_channels > 0``; the demo's previous model, kept for the evidence study):
  a 3x3 conv stack before the patch embedding and one after unpatchify, with a skip from the stem to the
  head, so neighbouring pixels and patch borders agree where patch tokens alone draw blocky patches.

Each end owns the layer that produces the velocity and zero-initialises it, so every configuration's
first prediction is exactly 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from miro.models.embedders import RewardEmbedder, TimestepEmbedder


@dataclass(frozen=True)
class DiTSize:
    hidden_size: int
    depth: int
    num_heads: int


# Names for Hydra configs (``model.size: S``). S/B/L/XL follow the DiT paper; "tiny" is for CPU tests;
# "demo" is the transformer of the embedded CPU demo (conf/model/dit_shapes.yaml adds its conv levels:
# 2.1M parameters in all, about 0.12 s per batch-32 bf16 training step on 2 CPU cores).
DIT_SIZES: dict[str, DiTSize] = {
    "tiny": DiTSize(hidden_size=32, depth=2, num_heads=2),
    "demo": DiTSize(hidden_size=128, depth=4, num_heads=4),
    "S": DiTSize(hidden_size=384, depth=12, num_heads=6),
    "B": DiTSize(hidden_size=768, depth=12, num_heads=12),
    "L": DiTSize(hidden_size=1024, depth=24, num_heads=16),
    "XL": DiTSize(hidden_size=1152, depth=28, num_heads=16),
}


@dataclass(frozen=True)
class DiTParams:
    """Everything that defines a :class:`MiroDiT`: the arguments of conf/model/*.yaml and of an exported
    model's config.json. The first seven may be given by position, the rest by name."""

    image_size: int  # side of what is denoised: pixels for the embedded demo, VAE latents for real data
    in_channels: int
    patch_size: int  # side of the core's patches, in pixels of the map it cuts them from
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    _: KW_ONLY
    text_dim: int
    reward_names: Sequence[str] = ()
    reward_dropout: float = 0.0
    fourier_dim: int = 64
    fourier_max_frequency: float = 64.0
    pooled_text: bool = True
    pooled_rewards: bool = False
    conv_channels: int = 0  # > 0: the conv stem and head (ConvStemHead) with this many channels
    unet_channels: Sequence[int] = ()  # one entry per conv level (ConvLevels); empty: no levels
    grad_checkpointing: bool = False
    self_conditioning: bool = False
    refiner_depth: int = 0
    refiner_registers: int = 0

    def __post_init__(self) -> None:
        normalised = {
            "mlp_ratio": float(self.mlp_ratio), "reward_names": tuple(self.reward_names),
            "reward_dropout": float(self.reward_dropout),
            "fourier_max_frequency": float(self.fourier_max_frequency),
            "pooled_text": bool(self.pooled_text), "pooled_rewards": bool(self.pooled_rewards),
            "unet_channels": tuple(int(c) for c in self.unet_channels),
            "grad_checkpointing": bool(self.grad_checkpointing),
            "self_conditioning": bool(self.self_conditioning),
            "refiner_depth": int(self.refiner_depth), "refiner_registers": int(self.refiner_registers),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)
        levels = self.unet_channels
        if self.conv_channels > 0 and levels:
            raise ValueError("conv_channels and unet_channels are alternatives: set one of them")
        if self.refiner_depth < 0 or self.refiner_registers < 0 or (
            self.refiner_registers and not self.refiner_depth
        ):
            raise ValueError(
                f"refiner_depth and refiner_registers must be >= 0, registers only with a refiner "
                f"(depth > 0); got depth {self.refiner_depth}, registers {self.refiner_registers}"
            )
        if any(c < 1 for c in levels):
            raise ValueError(f"unet_channels must be positive, got {list(levels)}")
        # The core sees the lowest conv level: each level below the first halves the side.
        if self.image_size % (self.patch_size * 2 ** max(len(levels) - 1, 0)):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
                + (f" x 2^{len(levels) - 1} (unet_channels levels)" if len(levels) > 1 else "")
            )

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable arguments, in the order config.json has always listed them."""
        config = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


# --------------------------------------------------------------------------------------------------
# The transformer core's parts


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """[grid_size**2, dim] fixed 2-D sin-cos embedding: half the channels encode rows, half columns."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs hidden_size divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    freqs = 1.0 / 10_000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def encode(pos: torch.Tensor) -> torch.Tensor:  # [N] -> [N, dim/2]
        args = pos[:, None] * freqs[None]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([encode(rows.reshape(-1)), encode(cols.reshape(-1))], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, N, D] normalised elsewhere; shift/scale [B, D]."""
    return x * (1 + scale[:, None]) + shift[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with a boolean ``mask`` (True = attend), through PyTorch's SDPA.

    Exception: bf16 on CPU. There the fused kernel's backward is ~7x slower than three plain batched
    matmuls at this model's sizes (measured with torch 2.13, 64 tokens, head dim 32: 31 ms vs 4 ms per
    forward+backward), and CPU bf16 is what the embedded demo trains in, so use the explicit formula.
    """
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, cross-attention otherwise."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, n, d = x.shape
        context = x if context is None else context
        h = self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)  # [B, h, N, d/h]
        kv = self.kv(context).view(b, context.shape[1], 2, h, d // h)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each [B, h, M, d/h]
        attn_mask = None
        if key_mask is not None:
            # A row with no valid key (empty caption, no rewards) would be all -inf -> NaN. Let it attend
            # to everything and zero its output below: "no context" then contributes nothing.
            has_key = key_mask.any(dim=1)  # [B]
            attn_mask = (key_mask | ~has_key[:, None])[:, None, None, :]  # [B, 1, 1, M]
        out = attention(q, k, v, attn_mask)
        out = out.transpose(1, 2).reshape(b, n, d)
        if key_mask is not None:
            out = out * has_key[:, None, None].to(out.dtype)
        return self.proj(out)


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, un-modulated cross-attention to the conditioning, adaLN-Zero MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        hidden_mlp = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_mlp),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_mlp, hidden_size),
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, cond: torch.Tensor, cond_mask: torch.Tensor
    ) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        x = x + self.cross(self.norm_cross(x), cond, cond_mask)
        x = x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class RefinerBlock(nn.Module):
    """Pre-norm self-attention and MLP over the conditioning tokens, each residual scaled by a learned
    per-channel layer scale starting at 0.1 (the official conditioning mapping's blocks)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, layer_scale: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        hidden_mlp = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_mlp), nn.GELU(approximate="tanh"),
            nn.Linear(hidden_mlp, hidden_size),
        )
        self.scale1 = nn.Parameter(torch.full((hidden_size,), layer_scale))
        self.scale2 = nn.Parameter(torch.full((hidden_size,), layer_scale))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.scale1 * self.attn(self.norm1(x), key_mask=key_mask)
        return x + self.scale2 * self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """adaLN-modulated norm + linear to ``patch_size**2 * out_channels`` per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class SelfConditioning(nn.Module):
    """Latent self-conditioning as MIRO's network does it: the output tokens of an earlier pass (the
    first pass of a training step, or the previous sampling step) enter the next pass's input tokens as
    a residual, LN_out(prev + MLP(LN_in(prev))). LN_out starts at zero, so the residual starts as a
    no-op and the model learns how much to trust its earlier estimate."""

    def __init__(self, hidden_size: int, mlp_size: int) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, mlp_size), nn.GELU(approximate="tanh"), nn.Linear(mlp_size, hidden_size)
        )
        self.norm_out = nn.LayerNorm(hidden_size, eps=1e-6)

    def forward(self, previous: torch.Tensor) -> torch.Tensor:
        return self.norm_out(previous + self.mlp(self.norm_in(previous)))


# --------------------------------------------------------------------------------------------------
# Image ends


class ImageEnds(nn.Module):
    """What stands between the image and the transformer core, on the way in and on the way out.

    :meth:`encode` turns the image into the map the core cuts into patches (``channels`` channels, a side
    ``reduction`` times smaller than the image's) plus whatever :meth:`decode` needs from the way in;
    :meth:`decode` turns the core's unpatchified output, a map of the same shape, into the velocity.
    An end keeps its weights in child modules: :class:`MiroDiT` registers those as its own layers.
    """

    channels: int
    reduction: int = 1
    # Layers that checkpoints list after the core's (see MiroDiT): the order a resumed run's optimiser
    # state is indexed by.
    after_transformer: tuple[str, ...] = ()

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, C, H, W], adaLN vector c [B, D] -> (the map to patchify, what decode needs)."""
        raise NotImplementedError

    def decode(self, y: torch.Tensor, saved: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        """The core's output map -> velocity [B, C, H, W]."""
        raise NotImplementedError

    def init_weights(self, core_out: nn.Linear) -> None:
        """Zero the layer that produces the velocity (``core_out``, the core's final linear, unless a
        layer of the end comes after it), so the first prediction is exactly 0."""
        raise NotImplementedError

    def macs(self, side: int) -> int:
        """Multiply-adds of :meth:`encode` and :meth:`decode` for one image of side ``side``."""
        raise NotImplementedError


class PatchEnds(ImageEnds):
    """The plain DiT's ends (for latents): the core cuts the input itself into patches and its
    unpatchified output is the velocity."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.channels = in_channels

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return x, []

    def decode(self, y: torch.Tensor, saved: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        return y

    def init_weights(self, core_out: nn.Linear) -> None:
        nn.init.zeros_(core_out.weight)
        nn.init.zeros_(core_out.bias)

    def macs(self, side: int) -> int:
        return 0


class ConvStemHead(ImageEnds):
    """Two 3x3 convs before the patch embedding, two after unpatchify on [core output, stem output]:
    neighbouring pixels and patch borders agree where patch tokens alone predict each patch
    independently (and, undertrained, draw blocky patches). The head's last conv is the output layer."""

    after_transformer = ("head",)

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU(),
        )
        self.head = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1), nn.SiLU(),
            nn.Conv2d(channels, in_channels, 3, padding=1),
        )

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.stem(x)
        return features, [features]

    def decode(self, y: torch.Tensor, saved: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([y, saved[0].to(y.dtype)], dim=1))

    def init_weights(self, core_out: nn.Linear) -> None:
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def macs(self, side: int) -> int:
        c_in, ch = self.stem[0].in_channels, self.channels
        return side * side * 9 * (c_in * ch + ch * ch + 2 * ch * ch + ch * c_in)


class ConvBlock(nn.Module):
    """Residual 3x3 conv block whose normalised features are scaled and shifted (FiLM) by the adaLN
    vector, so flow time, pooled caption and rewards reach every pixel. Zero-initialised last conv:
    the block starts as its (1x1) skip path."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * out_channels))
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        shift, scale = self.film(c)[:, :, None, None].chunk(2, dim=1)  # each [B, C_out, 1, 1]
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 where the channels allow it, else the largest divisor below 8."""
    return next(g for g in range(min(8, channels), 0, -1) if channels % g == 0)


class ConvLevels(ImageEnds):
    """The hourglass around the core: a stem conv, one :class:`ConvBlock` per level on the way down
    (each level below the first at half the side of the one above), the core on patches of the lowest
    level, then one block per level on the way up, each given the way down's map of its level as a
    skip, and an output conv (the output layer)."""

    def __init__(self, in_channels: int, channels: Sequence[int], cond_dim: int) -> None:
        super().__init__()
        ch = list(channels)
        self.channels, self.reduction, self.cond_dim = ch[-1], 2 ** (len(ch) - 1), cond_dim
        # one child, ``levels``: checkpoints name these layers levels.stem, levels.down.0, ...
        self.levels = nn.ModuleDict({
            "stem": nn.Conv2d(in_channels, ch[0], 3, padding=1),
            "down": nn.ModuleList(ConvBlock(ch[max(i - 1, 0)], ch[i], cond_dim) for i in range(len(ch))),
            "up": nn.ModuleList(
                ConvBlock(ch[i] + (ch[i + 1] if i + 1 < len(ch) else ch[i]), ch[i], cond_dim)
                for i in range(len(ch))
            ),
            "out": nn.Sequential(
                nn.GroupNorm(_groups(ch[0]), ch[0]), nn.SiLU(), nn.Conv2d(ch[0], in_channels, 3, padding=1)
            ),
        })

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (the lowest level's map, every level's map [B, ch_i, H / 2^i, W / 2^i] as skips)."""
        h, skips = self.levels.stem(x), []
        for i, block in enumerate(self.levels.down):
            h = block(F.avg_pool2d(h, 2) if i else h, c)
            skips.append(h)
        return h, skips

    def decode(self, y: torch.Tensor, saved: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        h = y
        for i in reversed(range(len(self.levels.up))):
            if i < len(self.levels.up) - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = self.levels.up[i](torch.cat([h, saved[i].to(h.dtype)], dim=1), c)
        return self.levels.out(h)

    def init_weights(self, core_out: nn.Linear) -> None:
        # Every block starts as its skip path, the output conv at zero.
        for block in [*self.levels.down, *self.levels.up]:
            nn.init.zeros_(block.conv2.weight)
            nn.init.zeros_(block.conv2.bias)
        nn.init.zeros_(self.levels.out[-1].weight)
        nn.init.zeros_(self.levels.out[-1].bias)

    def macs(self, side: int) -> int:
        ch = [block.conv2.out_channels for block in self.levels.down]
        c_in, d = self.levels.stem.in_channels, self.cond_dim

        def block(pixels: int, c_in_block: int, c_out: int) -> int:
            skip = pixels * c_in_block * c_out if c_in_block != c_out else 0
            return pixels * 9 * (c_in_block * c_out + c_out * c_out) + skip + d * 2 * c_out

        macs = 2 * side * side * 9 * c_in * ch[0]  # stem and output convs
        for i, c_i in enumerate(ch):
            pixels = (side >> i) ** 2
            below = ch[i + 1] if i + 1 < len(ch) else c_i
            macs += block(pixels, ch[max(i - 1, 0)], c_i) + block(pixels, c_i + below, c_i)
        return macs


def build_ends(params: DiTParams) -> ImageEnds:
    """The image ends ``params`` ask for: conv levels, a conv stem and head, or the plain DiT's."""
    if params.unet_channels:
        return ConvLevels(params.in_channels, params.unet_channels, params.hidden_size)
    if params.conv_channels > 0:
        return ConvStemHead(params.in_channels, params.conv_channels)
    return PatchEnds(params.in_channels)


# --------------------------------------------------------------------------------------------------
# The model


class MiroDiT(nn.Module):
    """Velocity network v(x_t, t, caption tokens, reward levels) for a square ``image_size`` input.

    Takes :class:`DiTParams`' fields (plain numbers and strings, so :meth:`to_config` /
    :meth:`from_config` round-trip through JSON with the weights) and composes the transformer core
    with the image ends they name (:func:`build_ends`).

    Checkpoint names: the ends' layers are registered on the DiT itself, under the names and in the order
    checkpoints have always listed them (``levels.*`` before the core's layers; ``stem.*`` before and
    ``head.*`` after them), so exported model directories and Lightning checkpoints, a resumed run's
    optimiser state included, load unchanged; their initial weights are drawn in that order too, so a
    seed gives the weights it always gave. ``self.ends`` holds the same layers behind the ends' common
    interface; it is kept out of the module tree so that each layer is listed once.
    """

    ends: ImageEnds

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        p = self.params = DiTParams(*args, **kwargs)
        self.image_size = p.image_size
        self.in_channels = p.in_channels
        self.patch_size = p.patch_size
        self.reward_names = list(p.reward_names)
        self.grad_checkpointing = p.grad_checkpointing
        self.self_conditioning = p.self_conditioning
        d = p.hidden_size

        with torch.random.fork_rng(devices=[]):  # its layers draw their weights where they are registered
            ends = build_ends(p)
        self.__dict__["ends"] = ends
        self.grid_size = p.image_size // (p.patch_size * ends.reduction)
        self._register_ends(after_transformer=False)
        self.patch_embed = nn.Conv2d(ends.channels, d, p.patch_size, stride=p.patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, self.grid_size), persistent=False)

        self.t_embedder = TimestepEmbedder(d)
        self.text_proj = nn.Sequential(nn.Linear(p.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.pooled_proj = (
            nn.Sequential(nn.Linear(p.text_dim, d), nn.SiLU(), nn.Linear(d, d)) if p.pooled_text else None
        )
        self.reward_embedder = RewardEmbedder(
            self.reward_names, d, p.fourier_dim, p.fourier_max_frequency, p.reward_dropout
        )
        self.pooled_reward_proj = (
            nn.Sequential(nn.SiLU(), nn.Linear(d, d)) if p.pooled_rewards and self.reward_names else None
        )
        self.blocks = nn.ModuleList(DiTBlock(d, p.num_heads, p.mlp_ratio) for _ in range(p.depth))
        # The optional refiner (MIRO's conditioning mapping): learned registers, then a few self-attention
        # blocks over [reward tokens, registers, text tokens] before the DiT cross-attends to all of them.
        self.refiner = nn.ModuleList(
            RefinerBlock(d, p.num_heads, p.mlp_ratio) for _ in range(p.refiner_depth)
        )
        self.registers = nn.Parameter(torch.zeros(p.refiner_registers, d)) if p.refiner_registers else None
        self.self_cond: SelfConditioning | None = (
            SelfConditioning(d, int(d * p.mlp_ratio)) if p.self_conditioning else None
        )
        # The core's output has the channels of the map it was cut from.
        self.final = FinalLayer(d, p.patch_size, ends.channels)
        self._register_ends(after_transformer=True)
        self._init_weights()

    def train(self, mode: bool = True) -> MiroDiT:
        self.ends.training = mode  # its layers follow through the module tree; the holder follows too
        return super().train(mode)

    def _register_ends(self, after_transformer: bool) -> None:
        """Register the ends' layers that go before (or after) the core's, and draw their initial weights
        now: at the place in the random stream where a layer built here would draw them, so a seed gives
        the same weights whatever order the ends build their layers in."""
        for name, layer in self.ends.named_children():
            if (name in self.ends.after_transformer) == after_transformer:
                self.add_module(name, layer)
                for module in layer.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()

    # ----------------------------------------------------------------------------------------------
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every gate and modulation starts at 0, so each block starts as the identity.
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
            # the un-gated cross-attention starts silent too
            nn.init.zeros_(block.cross.proj.weight)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        if self.registers is not None:
            nn.init.trunc_normal_(self.registers, std=0.02, a=-0.04, b=0.04)
        if self.self_cond is not None:  # a no-op residual at init, as the official network starts
            nn.init.zeros_(self.self_cond.norm_out.weight)
            nn.init.zeros_(self.self_cond.norm_out.bias)
        # Zero output layer -> the first prediction is exactly 0.
        self.ends.init_weights(self.final.linear)

    # ----------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return self.to_config()

    def to_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments; ``MiroDiT.from_config(m.to_config())`` rebuilds ``m``."""
        return self.params.to_config()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MiroDiT:
        return cls(**dict(config))

    @classmethod
    def from_size(cls, size: str, **kwargs: Any) -> MiroDiT:
        """``MiroDiT.from_size("S", image_size=32, in_channels=4, patch_size=2, text_dim=512)``."""
        if size not in DIT_SIZES:
            raise KeyError(f"unknown DiT size {size!r}; known sizes: {sorted(DIT_SIZES)}")
        return cls(**asdict(DIT_SIZES[size]), **kwargs)

    @property
    def num_rewards(self) -> int:
        return len(self.reward_names)

    # ----------------------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, N, hidden] with position embeddings."""
        x = self.patch_embed(x)  # [B, hidden, H/p, W/p]
        return x.flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, p*p*C] -> [B, C, H, W]."""
        b, g, p = x.shape[0], self.grid_size, self.patch_size
        c = x.shape[-1] // (p * p)
        x = x.reshape(b, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)

    def conditioning(
        self,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        rewards: torch.Tensor | None,
        reward_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (adaLN vector [B, D], conditioning tokens [B, L + R, D], their key mask [B, L + R])."""
        b = t.shape[0]
        text_mask = text_mask.bool()
        c = self.t_embedder(t)
        if self.pooled_proj is not None:
            m = text_mask[..., None].to(text_tokens.dtype)
            pooled = (text_tokens * m).sum(1) / m.sum(1).clamp(min=1.0)
            c = c + self.pooled_proj(pooled)
        reward_tokens = self.reward_embedder(rewards, reward_mask, b)  # [B, R, D]
        if self.pooled_reward_proj is not None:
            c = c + self.pooled_reward_proj(reward_tokens.mean(dim=1).to(c.dtype))
        text = self.text_proj(text_tokens)
        reward_keys = torch.ones(b, reward_tokens.shape[1], dtype=torch.bool, device=text_mask.device)
        if not len(self.refiner):
            cond = torch.cat([text, reward_tokens.to(text.dtype)], dim=1)
            return c, cond, torch.cat([text_mask, reward_keys], dim=1)
        parts, masks = [reward_tokens.to(text.dtype)], [reward_keys]
        if self.registers is not None:
            parts.append(self.registers.to(text.dtype).expand(b, -1, -1))
            masks.append(torch.ones(b, self.registers.shape[0], dtype=torch.bool, device=text_mask.device))
        cond, cond_mask = torch.cat([*parts, text], dim=1), torch.cat([*masks, text_mask], dim=1)
        for block in self.refiner:
            cond = block(cond, cond_mask)
        return c, cond, cond_mask

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        rewards: torch.Tensor | None = None,
        reward_mask: torch.Tensor | None = None,
        previous_tokens: torch.Tensor | None = None,
        return_tokens: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Velocity (noise - data) for x_t [B, C, H, W] at t [B] in [0, 1] (1 = pure noise).

        text_tokens [B, L, text_dim], text_mask [B, L] (True = real token); rewards [B, R] in [0, 1] or
        None (every reward missing); reward_mask [B, R] (True = present) or None (all present).
        With ``self_conditioning``: ``previous_tokens`` [B, N, hidden] are the transformer's output tokens
        of an earlier pass (None: none), and ``return_tokens`` also returns this pass's.
        """
        b, ch, h, w = x.shape
        if (ch, h, w) != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(
                f"MiroDiT expects inputs [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                f"got {tuple(x.shape)}"
            )
        if t.shape != (b,):
            raise ValueError(f"t must have shape [{b}], got {tuple(t.shape)}")
        if text_tokens.shape[0] != b or text_mask.shape != text_tokens.shape[:2]:
            raise ValueError(
                f"text_tokens {tuple(text_tokens.shape)} / text_mask {tuple(text_mask.shape)} do not match "
                f"batch size {b}"
            )
        c, cond, cond_mask = self.conditioning(t, text_tokens, text_mask, rewards, reward_mask)

        features, saved = self.ends.encode(x, c)
        tokens = self.patchify(features)  # [B, N, D]
        if previous_tokens is not None:
            if self.self_cond is None:
                raise ValueError("previous_tokens given to a MiroDiT built without self_conditioning")
            tokens = tokens + self.self_cond(previous_tokens.to(tokens.dtype))
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_ckpt:
                tokens = checkpoint(block, tokens, c, cond, cond_mask, use_reentrant=False)
            else:
                tokens = block(tokens, c, cond, cond_mask)
        out = self.ends.decode(self.unpatchify(self.final(tokens, c)), saved, c)
        return (out, tokens) if return_tokens else out


# --------------------------------------------------------------------------------------------------
# Cost


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def training_flops(forward_flops: float, self_cond_rate: float = 0.0) -> float:
    """Training FLOPs per image from one forward's: backward is 2x forward for every matrix product, so
    3x; self-conditioning adds one more forward. Its first pass runs over the whole batch whatever the
    share of samples that keep its output (the official loss masks the output, not the pass), so the
    extra is a full forward for any rate > 0, not ``rate`` forwards."""
    if not 0.0 <= self_cond_rate <= 1.0:
        raise ValueError(f"self_cond_rate must be in [0, 1], got {self_cond_rate}")
    return (3.0 + (1.0 if self_cond_rate > 0 else 0.0)) * forward_flops


def flops_per_image(model: MiroDiT, text_length: int, self_conditioned: bool | None = None) -> float:
    """Forward FLOPs of one image: every matrix product (2 FLOPs per multiply-add) of the image ends,
    patch embedding, conditioning MLPs, blocks (adaLN, self- and cross-attention, MLP) and final layer;
    element-wise work is left out (< 1%). Equal to torch's FlopCounterMode count
    (tests/test_bench_flops.py); the GPU benchmark reports it next to the FLOPs it counts.
    ``self_conditioned`` (default: whether the model has self-conditioning) counts the self-conditioning
    MLP of a pass given previous tokens; a training step's total is :func:`training_flops`."""
    p = model.params
    d, patch_in = p.hidden_size, p.patch_size**2 * model.ends.channels  # values per patch of the core's map
    n, r = model.grid_size**2, model.num_rewards
    m, mlp = text_length + r + p.refiner_registers, int(d * p.mlp_ratio)
    freq = model.t_embedder.mlp[0].in_features
    macs = model.ends.macs(p.image_size)
    macs += n * patch_in * d  # patch embedding
    macs += freq * d + d * d  # timestep MLP
    macs += text_length * (p.text_dim * d + d * d)  # text projection
    if p.pooled_text:
        macs += p.text_dim * d + d * d
    macs += r * (p.fourier_dim * d + d * d)  # one value MLP per reward
    if p.pooled_rewards and r:
        macs += d * d
    block = (
        6 * d * d  # adaLN
        + 4 * n * d * d
        + 2 * n * n * d  # self-attention
        + 2 * n * d * d
        + 2 * m * d * d
        + 2 * n * m * d  # cross-attention
        + 2 * n * d * mlp  # MLP
    )
    macs += p.depth * block
    macs += p.refiner_depth * (4 * m * d * d + 2 * m * m * d + 2 * m * d * mlp)  # refiner: attention + MLP
    counted_sc = model.self_conditioning if self_conditioned is None else self_conditioned
    if counted_sc and model.self_conditioning:
        macs += n * 2 * d * mlp  # the self-conditioning MLP over the image tokens
    macs += 2 * d * d + n * d * patch_in  # final layer
    return 2.0 * macs
