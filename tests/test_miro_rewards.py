"""The seven MIRO rewards on tiny random models of their real architectures (nothing is downloaded).

Each family is built from the same classes its loader uses (open_clip CLIP, transformers' CLIP / BLIP /
T5), scored through the reward's own preprocessing and scoring code, and checked against a hand
computation of its formula. Loaders are run on tiny checkpoints written in the official file layouts.
JINA CLIP v2 is custom remote code that cannot be built offline: its test uses a transformers CLIP
model as a stand-in for the two towers and checks everything around them (preprocessing settings,
tokenizer call, score formula).
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from miro.rewards.aesthetic import AestheticHead, AestheticReward, AestheticScorer
from miro.rewards.base import build_reward, resolve_name
from miro.rewards.checkpoints import RewardCheckpointError
from miro.rewards.clip_common import (
    CLIP_MEAN,
    CLIP_STD,
    HFClipScorer,
    ImagePreprocess,
    resize_like_pil,
    resolve_dtype,
)
from miro.rewards.hps import HpsReward, HpsScorer, hps_preprocess
from miro.rewards.imagereward import (
    REWARD_MEAN,
    REWARD_STD,
    ImageRewardReward,
    ImageRewardScorer,
    blip_tokenizer,
    map_imagereward_state_dict,
    text_config_from_med,
)
from miro.rewards.jina_clip import REVISION, JinaClipReward, JinaClipScorer, preprocess_from_jina
from miro.rewards.pick import PickReward
from miro.rewards.sci import SciReward
from miro.rewards.vqa import (
    SYSTEM_MESSAGE,
    ClipT5Scorer,
    VqaReward,
    build_projector,
    split_clip_t5_state,
    vision_state,
)
from miro.rewards.weights import MissingWeightsError, hub_file, url_file, weights_dir

torch.set_num_threads(2)
CAPTIONS = ["a red circle", "two blue squares above a yellow triangle", "a cat"]
TOL = dict(rtol=1e-4, atol=1e-5)
VISION_KEY = "vision_tower.vision_tower.vision_model."


def _images(n: int = 3, h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    """Smooth random images (a low-res pattern upsampled), like photos rather than noise."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 5, 7, generator=gen) * 255
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).round().to(torch.uint8)


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    """Random-init tiny models are nearly constant; spread their weights so outputs differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return module.eval()


# ---------------------------------------------------------------------------------------------------
# Shared tiny parts


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory) -> str:
    """Register tiny open_clip architectures, so the real loaders can build them by name."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / "miro-test-tiny.json").write_text(json.dumps(TINY_OPEN_CLIP))
    (folder / "miro-test-tiny-quickgelu.json").write_text(json.dumps({**TINY_OPEN_CLIP, "quick_gelu": True}))
    open_clip.add_model_config(folder)
    return "miro-test-tiny"


def _open_clip_model(arch: str, seed: int) -> torch.nn.Module:
    import open_clip

    torch.manual_seed(seed)
    return _perturb(open_clip.create_model(arch, pretrained=None), seed, 0.05)


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory) -> Path:
    """The real CLIP BPE vocabulary (shipped inside open_clip) as transformers tokenizer files."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


@pytest.fixture(scope="module")
def clip_tokenizer(clip_tokenizer_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=str(clip_tokenizer_dir / "vocab.json"), merges=str(clip_tokenizer_dir / "merges.txt")
    )


def _hf_clip(seed: int):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=12,
    )
    torch.manual_seed(seed)
    return _perturb(CLIPModel(config), seed, 0.1)


CLIP_PROCESSOR = {
    "crop_size": {"height": 32, "width": 32},
    "size": {"shortest_edge": 32},
    "do_center_crop": True,
    "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD),
    "resample": 3,
    "image_processor_type": "CLIPImageProcessor",
}


# ---------------------------------------------------------------------------------------------------
# Preprocessing


def _pixels(t: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Normalised tensor [..., 3, H, W] back to 0..255."""
    return (t * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)) * 255


def _natural(h: int, w: int, seed: int) -> torch.Tensor:
    """A photo-like uint8 image [1, 3, h, w]: smooth gradients, noise and a hard-edged disc."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([yy * 200 + 20, xx * 180 + 40, (1 - yy) * xx * 230 + 10])
    base = base + torch.randn(3, h, w, generator=g) * 12
    disc = (yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.05
    base[:, disc] = torch.tensor([250.0, 30.0, 60.0]).view(3, 1)
    return base.clamp(0, 255).round().to(torch.uint8)[None]


def _pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).numpy())


@pytest.mark.parametrize("size", [(40, 56), (64, 30), (20, 20), (451, 300), (250, 333)])
def test_crop_preprocess_matches_open_clip_pil_transform_exactly(size):
    """open_clip's (= OpenAI CLIP's, BLIP's) transform resizes PIL images: we reproduce PIL bit for bit."""
    import open_clip

    images = torch.cat([_images(1, *size), _natural(*size, seed=1)])
    ours = ImagePreprocess(size=32)(images)
    reference = open_clip.image_transform(32, is_train=False)
    for img, out in zip(images, ours, strict=True):
        ref = reference(_pil(img))
        assert out.shape == ref.shape == (3, 32, 32)
        assert (_pixels(out) - _pixels(ref)).abs().max() <= 1e-3  # grey levels: exact up to float noise


@pytest.mark.parametrize(
    "size", [(17, 9, 5, 30), (300, 451, 224, 336), (1216, 832, 327, 224), (61, 90, 80, 37), (33, 33, 7, 7)]
)
def test_resize_like_pil_is_bit_exact(size):
    """Both pass orders of Pillow 13 (vertical first when the height shrinks much more) and upscaling."""
    h, w, oh, ow = size
    img = _natural(h, w, seed=h)
    ours = resize_like_pil(img.float(), oh, ow)[0]
    ref = torch.from_numpy(np.array(_pil(img[0]).resize((ow, oh), Image.BICUBIC))).permute(2, 0, 1)
    assert torch.equal(ours, ref.float())


@pytest.mark.parametrize("size", [(1216, 832), (333, 250), (451, 300), (300, 451)])
def test_hf_processor_crop_takes_the_floor_of_an_odd_margin(size):
    """transformers' center_crop: top = (h - crop) // 2; torchvision's rounds (1216x832: 103 -> 51 vs 52)."""
    from transformers.image_transforms import center_crop

    img = _natural(*size, seed=3)
    config = CLIP_PROCESSOR | {"crop_size": {"height": 224, "width": 224}, "size": {"shortest_edge": 224}}
    pre = ImagePreprocess.from_hf_processor(config)
    h, w = size
    nh, nw = (224, int(224 * w / h)) if h <= w else (int(224 * h / w), 224)
    resized = np.array(_pil(img[0]).resize((nw, nh), Image.BICUBIC))
    ref = center_crop(resized, (224, 224), input_data_format="channels_last")
    ours = _pixels(pre(img)[0]).permute(1, 2, 0)
    assert (ours - torch.from_numpy(np.ascontiguousarray(ref)).float()).abs().max() <= 1e-3
    if size == (1216, 832):
        assert pre.centre_crop_offset(103) == 51 and ImagePreprocess(size=224).centre_crop_offset(103) == 52


def _resize_max_size(img: torch.Tensor, size: int) -> torch.Tensor:
    """hpsv2 1.2.0's validation transform: ToTensor(), then ResizeMaxSize on the float tensor."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode, ToTensor

    t = ToTensor()(_pil(img))
    h, w = t.shape[1:]
    new = tuple(round(d * size / max(h, w)) for d in (h, w))
    t = TF.resize(t, list(new), InterpolationMode.BICUBIC)
    pad_h, pad_w = size - new[0], size - new[1]
    return TF.pad(t, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0) * 255


def _expand2square(img: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - img.size[0]) // 2, (side - img.size[1]) // 2))
    return canvas


@pytest.mark.parametrize("size", [(40, 56), (64, 30), (451, 300), (250, 333)])
def test_hps_letterbox_is_hpsv2s_float_resize(size):
    """One antialiased bicubic pass on the float image, no rounding or clamping (PIL's: 14 levels off)."""
    images = torch.cat([_images(1, *size), _natural(*size, seed=2)])
    letterbox = hps_preprocess(32)(images)
    for img, lb in zip(images, letterbox, strict=True):
        assert (_pixels(lb) - _resize_max_size(img, 32)).abs().max() <= 1e-3
    # The letterbox keeps a black border on the short side (56 wide -> 32 x 23, 4-5 rows each side).
    if size == (40, 56):
        assert torch.allclose(_pixels(letterbox[:, :, :4]), torch.zeros(1), atol=1e-3)


@pytest.mark.parametrize("size", [(40, 56), (64, 30), (333, 250)])
def test_pad_square_matches_expand2square_and_pil_exactly(size):
    images = torch.cat([_images(1, *size), _natural(*size, seed=4)])
    fill = (122, 116, 104)
    padded = ImagePreprocess(size=32, mode="pad_square", fill=fill)(images)
    for img, pad in zip(images, padded, strict=True):
        ref_pad = _expand2square(_pil(img), fill).resize((32, 32), Image.BICUBIC)
        ref_pad = torch.from_numpy(np.array(ref_pad)).permute(2, 0, 1).float()
        assert (_pixels(pad) - ref_pad).abs().max() <= 1e-3


def test_preprocess_rejects_bad_input_and_settings():
    with pytest.raises(ValueError, match="uint8"):
        ImagePreprocess(size=32)(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="resize mode"):
        ImagePreprocess(size=32, mode="zoom")
    with pytest.raises(ValueError, match="bicubic"):
        ImagePreprocess.from_hf_processor({**CLIP_PROCESSOR, "resample": 2})
    with pytest.raises(ValueError, match="kernel"):
        ImagePreprocess(size=32, kernel="lanczos")
    with pytest.raises(ValueError, match="crop offset"):
        ImagePreprocess(size=32, crop_offset="round")
    assert ImagePreprocess.from_hf_processor(CLIP_PROCESSOR) == ImagePreprocess(
        size=32, crop_offset="transformers"
    )


def test_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------
# aesthetic


def _aesthetic_scorer(tiny_open_clip) -> AestheticScorer:
    model = _open_clip_model(f"{tiny_open_clip}-quickgelu", 1)
    torch.manual_seed(2)
    head = _perturb(AestheticHead(16), 2, 0.05)
    return AestheticScorer(model.visual, head, ImagePreprocess(size=32))


def test_aesthetic_is_the_linear_head_on_normalised_embeddings(tiny_open_clip):
    scorer = _aesthetic_scorer(tiny_open_clip)
    reward = AestheticReward(scorer=scorer, batch_size=2)
    images = _images(5)
    scores = reward.score(images, [""] * 5)
    assert scores.shape == (5,) and scores.dtype == torch.float32
    # By hand: the head has no activations, so it is one affine map W x + b.
    linears = [m for m in scorer.head.layers if isinstance(m, torch.nn.Linear)]
    weight, bias = linears[0].weight, linears[0].bias
    for layer in linears[1:]:
        weight, bias = layer.weight @ weight, layer.weight @ bias + layer.bias
    with torch.no_grad():
        embedding = scorer.visual(ImagePreprocess(size=32)(images))
        expected = (embedding / embedding.norm(dim=-1, keepdim=True)) @ weight.T + bias
    torch.testing.assert_close(scores, expected.squeeze(-1), **TOL)
    assert scores.std() > 1e-4  # images are told apart
    assert not reward.needs_captions


def test_aesthetic_loader_reads_open_clip_and_head_files(tiny_open_clip, tmp_path):
    from safetensors.torch import save_file

    scorer = _aesthetic_scorer(tiny_open_clip)
    clip = _open_clip_model(f"{tiny_open_clip}-quickgelu", 1)
    save_file(
        {k: v.contiguous() for k, v in clip.state_dict().items()}, tmp_path / "open_clip_model.safetensors"
    )
    torch.save(scorer.head.state_dict(), tmp_path / "head.pth")
    reward = AestheticReward(
        clip_arch=f"{tiny_open_clip}-quickgelu",
        paths={"clip": str(tmp_path / "open_clip_model.safetensors"), "head": str(tmp_path / "head.pth")},
    )
    images = _images()
    torch.testing.assert_close(
        reward.score(images, [""] * 3), AestheticReward(scorer=scorer).score(images, [""] * 3)
    )


def test_aesthetic_low_precision_keeps_the_head_in_float32(tiny_open_clip):
    fp32 = AestheticReward(scorer=_aesthetic_scorer(tiny_open_clip), dtype="float32")
    bf16 = AestheticReward(scorer=_aesthetic_scorer(tiny_open_clip), dtype="bfloat16")
    assert bf16.scorer.head.layers[0].weight.dtype == torch.float32
    assert bf16.scorer.visual.conv1.weight.dtype == torch.bfloat16
    images = _images()
    torch.testing.assert_close(
        bf16.score(images, [""] * 3), fp32.score(images, [""] * 3), rtol=0.05, atol=0.05
    )


# ---------------------------------------------------------------------------------------------------
# hps


def test_hps_is_the_cosine_of_open_clip_features(tiny_open_clip, tmp_path):
    import open_clip

    model = _open_clip_model(tiny_open_clip, 3)
    tokenizer = open_clip.get_tokenizer(tiny_open_clip)
    reward = HpsReward(scorer=HpsScorer(model, tokenizer, hps_preprocess(32)))
    images = _images()
    scores = reward.score(images, CAPTIONS)
    with torch.no_grad():
        img = model.encode_image(hps_preprocess(32)(images))
        txt = model.encode_text(tokenizer(CAPTIONS))
    expected = (img / img.norm(dim=-1, keepdim=True) * (txt / txt.norm(dim=-1, keepdim=True))).sum(-1)
    torch.testing.assert_close(scores, expected, **TOL)
    assert scores.abs().max() <= 1
    # The loader: an HPS-style checkpoint (weights under "state_dict") loads strictly.
    torch.save({"state_dict": model.state_dict()}, tmp_path / "HPS_v2.1_compressed.pt")
    loaded = HpsReward(arch=tiny_open_clip, paths={"checkpoint": str(tmp_path / "HPS_v2.1_compressed.pt")})
    torch.testing.assert_close(loaded.score(images, CAPTIONS), scores)


class _NotATensor:
    pass


def test_hps_checkpoints_load_with_weights_only(tiny_open_clip, tmp_path):
    """A checkpoint smuggling an arbitrary object must be refused, not unpickled."""
    model = _open_clip_model(tiny_open_clip, 3)
    torch.save({"state_dict": model.state_dict(), "payload": _NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        HpsReward(arch=tiny_open_clip, paths={"checkpoint": str(tmp_path / "evil.pt")})


def test_hps_loader_is_strict_and_explains_what_it_drops(tiny_open_clip, tmp_path):
    """Real checkpoints: DDP's module. prefix, half-precision storage, a stale buffer; anything else fails."""
    model = _open_clip_model(tiny_open_clip, 4)
    state = {f"module.{k}": v.half() for k, v in model.state_dict().items()}
    state["module.text.position_ids"] = torch.arange(8)[None]
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "hps.pt")
    reward = HpsReward(arch=tiny_open_clip, paths={"checkpoint": str(tmp_path / "hps.pt")})
    assert reward.scorer.load_report.dropped == {
        "text.position_ids": "position-id buffer of older transformers"
    }
    loaded = reward.scorer.model.state_dict()
    assert all(v.dtype == torch.float32 for v in loaded.values() if v.is_floating_point())
    torch.testing.assert_close(loaded["logit_scale"], model.state_dict()["logit_scale"].half().float())
    for name, bad in (
        ("extra", {**state, "module.visual.head.weight": torch.zeros(2)}),
        ("shape", {**state, "module.logit_scale": torch.zeros(3)}),
        ("missing", {k: v for k, v in state.items() if not k.endswith("ln_final.weight")}),
    ):
        torch.save({"state_dict": bad}, tmp_path / f"{name}.pt")
        with pytest.raises(RewardCheckpointError) as err:
            HpsReward(arch=tiny_open_clip, paths={"checkpoint": str(tmp_path / f"{name}.pt")})
        line = str(err.value)
        assert "\n" not in line and f"{name}.pt" in line, line
        expected = {
            "extra": "unexpected key 'visual.head.weight'",
            "shape": "shape mismatch for logit_scale",
            "missing": "missing key 'ln_final.weight'",
        }[name]
        assert expected in line, line


# ---------------------------------------------------------------------------------------------------
# imagereward

TINY_BLIP_VIT = dict(
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    image_size=32,
    patch_size=16,
    layer_norm_eps=1e-6,
    hidden_act="gelu",
)
BERT_WORDS = [
    "[PAD]",
    "[unused0]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "a",
    "red",
    "circle",
    "two",
    "blue",
    "square",
    "##s",
    "above",
    "yellow",
    "triangle",
    "cat",
]


def _official_blip_vit_state(seed: int) -> dict[str, torch.Tensor]:
    """BLIP's VisionTransformer weights under ImageReward.pt's key names, for TINY_BLIP_VIT."""
    gen = torch.Generator().manual_seed(seed)
    w, m, p = TINY_BLIP_VIT["hidden_size"], TINY_BLIP_VIT["intermediate_size"], TINY_BLIP_VIT["patch_size"]
    tokens = (TINY_BLIP_VIT["image_size"] // p) ** 2 + 1

    def r(*shape, base=0.0):
        return base + 0.2 * torch.randn(*shape, generator=gen)

    v = "blip.visual_encoder."
    state = {
        v + "cls_token": r(1, 1, w),
        v + "pos_embed": r(1, tokens, w),
        v + "patch_embed.proj.weight": r(w, 3, p, p),
        v + "patch_embed.proj.bias": r(w),
    }
    for i in range(TINY_BLIP_VIT["num_hidden_layers"]):
        b = f"{v}blocks.{i}."
        state |= {
            b + "norm1.weight": r(w, base=1),
            b + "norm1.bias": r(w),
            b + "attn.qkv.weight": r(3 * w, w),
            b + "attn.qkv.bias": r(3 * w),
            b + "attn.proj.weight": r(w, w),
            b + "attn.proj.bias": r(w),
            b + "norm2.weight": r(w, base=1),
            b + "norm2.bias": r(w),
            b + "mlp.fc1.weight": r(m, w),
            b + "mlp.fc1.bias": r(m),
            b + "mlp.fc2.weight": r(w, m),
            b + "mlp.fc2.bias": r(w),
        }
    return state | {
        v + "norm.weight": r(w, base=1),
        v + "norm.bias": r(w),
        "blip.vision_proj.weight": r(8, w),
    }


def _blip_vit_reference(state: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """BLIP's ViT written out from its official weight names: pre-norm blocks, fused qkv, exact GELU."""
    v, w, heads = "blip.visual_encoder.", TINY_BLIP_VIT["hidden_size"], TINY_BLIP_VIT["num_attention_heads"]
    x = (
        F.conv2d(
            pixels,
            state[v + "patch_embed.proj.weight"],
            state[v + "patch_embed.proj.bias"],
            stride=TINY_BLIP_VIT["patch_size"],
        )
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([state[v + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + state[v + "pos_embed"]
    b_, n = x.shape[:2]
    for i in range(TINY_BLIP_VIT["num_hidden_layers"]):
        b = f"{v}blocks.{i}."
        h = F.layer_norm(x, (w,), state[b + "norm1.weight"], state[b + "norm1.bias"], 1e-6)
        q, k, val = (
            F.linear(h, state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"])
            .reshape(b_, n, 3, heads, w // heads)
            .permute(2, 0, 3, 1, 4)
        )
        att = ((q @ k.transpose(-1, -2)) * (w // heads) ** -0.5).softmax(-1) @ val
        x = x + F.linear(
            att.transpose(1, 2).reshape(b_, n, w), state[b + "attn.proj.weight"], state[b + "attn.proj.bias"]
        )
        h = F.layer_norm(x, (w,), state[b + "norm2.weight"], state[b + "norm2.bias"], 1e-6)
        h = F.linear(
            F.gelu(F.linear(h, state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"])),
            state[b + "mlp.fc2.weight"],
            state[b + "mlp.fc2.bias"],
        )
        x = x + h
    return F.layer_norm(x, (w,), state[v + "norm.weight"], state[v + "norm.bias"], 1e-6)


@pytest.fixture(scope="module")
def imagereward_files(tmp_path_factory):
    """A tiny ImageReward.pt with the official key names, its med_config.json and a BERT vocab."""
    from transformers import BlipTextModel

    folder = tmp_path_factory.mktemp("imagereward")
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    med = dict(
        vocab_size=len(BERT_WORDS) + 2,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=40,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        pad_token_id=0,
        encoder_width=768,
        add_cross_attention=True,
        type_vocab_size=2,
    )
    (folder / "med_config.json").write_text(json.dumps(med))
    torch.manual_seed(4)
    text = _perturb(
        BlipTextModel(text_config_from_med(med, TINY_BLIP_VIT["hidden_size"]), add_pooling_layer=False), 4
    )
    torch.manual_seed(5)
    head = _perturb(AestheticHead(16), 5, 0.05)
    state = _official_blip_vit_state(6)
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[
        None
    ]  # older BLIP checkpoints have it
    state |= {f"mlp.{k}": v for k, v in head.state_dict().items()}
    torch.save(state, folder / "ImageReward.pt")
    return folder, state


def test_imagereward_key_mapping_reproduces_blip_vit(imagereward_files):
    from transformers import BlipVisionConfig, BlipVisionModel

    _, state = imagereward_files
    parts = map_imagereward_state_dict(state)
    vision = BlipVisionModel(BlipVisionConfig(**TINY_BLIP_VIT)).eval()
    vision.load_state_dict(parts["vision"], strict=True)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = vision(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(ours, _blip_vit_reference(state, pixels), rtol=1e-4, atol=1e-4)
    assert set(parts["head"]) == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    with pytest.raises(RewardCheckpointError, match="x.pt: unexpected key 'blip.text_decoder.weight'"):
        map_imagereward_state_dict({"blip.text_decoder.weight": torch.zeros(1)}, file="x.pt")
    with pytest.raises(RewardCheckpointError, match="key 'blip.visual_encoder.blocks.0.ls1.gamma'"):
        map_imagereward_state_dict({"blip.visual_encoder.blocks.0.ls1.gamma": torch.zeros(1)})


def test_imagereward_score_by_hand(imagereward_files):
    folder, state = imagereward_files
    paths = {
        name: str(folder / file)
        for name, file in (
            ("checkpoint", "ImageReward.pt"),
            ("med_config", "med_config.json"),
            ("vocab", "vocab.txt"),
        )
    }
    reward = ImageRewardReward(paths=paths, vision=TINY_BLIP_VIT)
    scorer = reward.scorer
    assert isinstance(scorer, ImageRewardScorer)
    images = _images()
    scores = reward.score(images, CAPTIONS)
    # By hand: the BLIP tokenizer pads to 35, the [CLS] feature of the cross-attending encoder -> MLP.
    tokens = blip_tokenizer(folder / "vocab.txt")(
        CAPTIONS, padding="max_length", truncation=True, max_length=35, return_tensors="pt"
    )
    assert tokens["input_ids"].shape == (3, 35) and (tokens["input_ids"][:, 0] == 3).all()  # [CLS]
    with torch.no_grad():
        image_tokens = _blip_vit_reference(state, ImagePreprocess(size=32)(images))
        hidden = scorer.text(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long),
        )
        raw = scorer.head(hidden.last_hidden_state[:, 0]).squeeze(-1)
    torch.testing.assert_close(scores, (raw - REWARD_MEAN) / REWARD_STD, rtol=1e-4, atol=1e-4)
    # The caption matters (cross-attention and text both feed the score).
    assert not torch.allclose(scores, reward.score(images, ["a cat"] * 3))


def test_blip_tokenizer_adds_blip_tokens(imagereward_files):
    folder, _ = imagereward_files
    tokenizer = blip_tokenizer(folder / "vocab.txt")
    assert len(tokenizer) == len(BERT_WORDS) + 2
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(BERT_WORDS), len(BERT_WORDS) + 1]
    assert tokenizer.tokenize("Two blue Squares") == ["two", "blue", "square", "##s"]


# ---------------------------------------------------------------------------------------------------
# pick / sci (transformers CLIPModel)


def test_clip_tokenizer_is_the_real_clip_bpe(clip_tokenizer, tiny_open_clip):
    import open_clip

    ours = clip_tokenizer(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    reference = open_clip.get_tokenizer(tiny_open_clip)(CAPTIONS)
    mask = reference != 0  # open_clip pads with 0, the HF tokenizer with <|endoftext|>
    assert torch.equal(ours[mask], reference[mask])


@pytest.mark.parametrize("reward_cls", [PickReward, SciReward])
def test_pick_and_sci_are_scaled_cosines(reward_cls, clip_tokenizer, clip_tokenizer_dir, tmp_path):
    from transformers import CLIPTokenizer

    model = _hf_clip(7)
    preprocess = ImagePreprocess.from_hf_processor(CLIP_PROCESSOR)
    reward = reward_cls(scorer=HFClipScorer(model, clip_tokenizer, preprocess))
    images = _images()
    scores = reward.score(images, CAPTIONS)
    with torch.no_grad():
        tokens = clip_tokenizer(CAPTIONS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = model.get_image_features(pixel_values=preprocess(images))
        txt = model.get_text_features(**tokens)
        img, txt = (getattr(t, "pooler_output", t) for t in (img, txt))
        expected = model.logit_scale.exp() * F.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(scores, expected, **TOL)
    # The loader: a saved CLIPModel folder plus processor files, as on the hub.
    model.save_pretrained(tmp_path)
    CLIPTokenizer(
        vocab=str(clip_tokenizer_dir / "vocab.json"), merges=str(clip_tokenizer_dir / "merges.txt")
    ).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(CLIP_PROCESSOR))
    paths = {"model": str(tmp_path)} | ({"processor": str(tmp_path)} if reward_cls is PickReward else {})
    torch.testing.assert_close(reward_cls(paths=paths).score(images, CAPTIONS), scores, **TOL)


# ---------------------------------------------------------------------------------------------------
# vqa (CLIP vision tower + projector + T5)


def _t5_tokenizer(words: list[str]):
    """A word-level stand-in for the T5 tokenizer with T5's conventions: <pad>=0, </s>=1 appended."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def vqa_parts():
    from transformers import CLIPVisionConfig, CLIPVisionModel, T5Config, T5ForConditionalGeneration

    text = (
        SYSTEM_MESSAGE
        + " USER: ASSISTANT: Does this figure show ? Please answer yes or no. Yes "
        + " ".join(CAPTIONS)
    )
    tokenizer = _t5_tokenizer(re.findall(r"\w+|[^\w\s]+", text))
    torch.manual_seed(8)
    vision = _perturb(
        CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=3,
                num_attention_heads=2,
                image_size=28,
                patch_size=14,
            )
        ),
        8,
        0.1,
    )
    projector = _perturb(build_projector("mlp2x_gelu", 16, 24), 9, 0.1)
    config = T5Config(
        vocab_size=len(tokenizer) + 6,
        d_model=24,
        d_kv=12,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(10)
    t5 = _perturb(T5ForConditionalGeneration(config), 10, 0.5)
    preprocess = ImagePreprocess(size=28, mode="pad_square", fill=(122, 116, 104))
    return vision, projector, t5, tokenizer, preprocess


def test_vqa_prompt_follows_t2v_metrics(vqa_parts):
    scorer = ClipT5Scorer(*vqa_parts)
    before, after = scorer.prompt("a red circle")
    assert before == SYSTEM_MESSAGE + " USER: "
    assert after == '\nDoes this figure show "a red circle"? Please answer yes or no. ASSISTANT: '


def test_vqa_encoder_inputs_by_hand(vqa_parts):
    vision, projector, t5, tokenizer, preprocess = vqa_parts
    scorer = ClipT5Scorer(*vqa_parts)
    images = _images(2)
    captions = ["a cat", "two blue squares above a yellow triangle"]
    with torch.no_grad():
        embeds, mask = scorer.encoder_inputs(images, captions)
        hidden = vision(pixel_values=preprocess(images), output_hidden_states=True).hidden_states[-2]
        image_tokens = projector(hidden[:, 1:])  # second-to-last layer, CLS dropped: 4 patches
        for i, caption in enumerate(captions):
            before, after = scorer.prompt(caption)
            ids_before, ids_after = tokenizer(before).input_ids, tokenizer(after).input_ids
            assert ids_before[-1] == ids_after[-1] == 1  # each piece ends with its own </s>
            row = torch.cat(
                [t5.shared(torch.tensor(ids_before)), image_tokens[i], t5.shared(torch.tensor(ids_after))]
            )
            n = row.shape[0]
            torch.testing.assert_close(embeds[i, :n], row)
            assert mask[i, :n].all() and not mask[i, n:].any() and (embeds[i, n:] == 0).all()
    assert mask[0].sum() < mask[1].sum()


def test_vqa_score_is_the_probability_of_yes(vqa_parts):
    vision, projector, t5, tokenizer, preprocess = vqa_parts
    reward = VqaReward(scorer=ClipT5Scorer(*vqa_parts))
    images = _images()
    scores = reward.score(images, CAPTIONS)
    # By hand: decoder input [<pad>, Yes]; the score is the geometric mean of P(Yes) and P(</s> | Yes)
    # over the tokenizer's vocabulary (the model has 6 extra, unused rows, as FlanT5 has 28).
    yes, eos = tokenizer("Yes").input_ids
    with torch.no_grad():
        embeds, mask = reward.scorer.encoder_inputs(images, CAPTIONS)
        decoder = torch.tensor([[0, yes]] * 3)
        logits = t5(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder).logits
        probs = logits[..., : len(tokenizer)].softmax(-1)
    expected = (probs[:, 0, yes] * probs[:, 1, eos]).sqrt()
    torch.testing.assert_close(scores, expected, **TOL)
    assert ((scores > 0) & (scores < 1)).all()
    # Padding in a batch does not leak into a caption's score.
    alone = reward.score(images[:1], CAPTIONS[:1])
    torch.testing.assert_close(alone, scores[:1], rtol=1e-4, atol=1e-5)


def _original_clip_vision_state(vision: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tower as t2v_metrics' CLIPT5 saves it: a transformers-4 ``CLIPVisionModel`` under
    ``vision_tower.vision_tower.``, so every weight sits under ``vision_model.``, plus the persistent
    ``position_ids`` buffer that transformers 4 wrote. The names are spelled out here, not derived."""
    weights = vision.state_dict()
    config = vision.config
    names = [
        "embeddings.class_embedding",
        "embeddings.patch_embedding.weight",
        "embeddings.position_embedding.weight",
        "pre_layrnorm.weight",
        "pre_layrnorm.bias",
        "post_layernorm.weight",
        "post_layernorm.bias",
    ]
    for i in range(config.num_hidden_layers):
        for sub in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj"):
            names += [f"encoder.layers.{i}.{sub}.weight", f"encoder.layers.{i}.{sub}.bias"]
        for sub in ("layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2"):
            names += [f"encoder.layers.{i}.{sub}.weight", f"encoder.layers.{i}.{sub}.bias"]
    state = {f"vision_tower.vision_tower.vision_model.{n}": weights[n].clone() for n in names}
    n_positions = (config.image_size // config.patch_size) ** 2 + 1
    state["vision_tower.vision_tower.vision_model.embeddings.position_ids"] = torch.arange(n_positions)[None]
    return state


def _write_clip_t5_checkpoint(
    folder: Path,
    vqa_parts,
    fmt: str,
    lm_head_shift: float = 0.0,
    dtype: torch.dtype = torch.float32,
    extra: dict | None = None,
) -> None:
    """The CLIPT5ForConditionalGeneration layout: T5 keys, mm_projector.*, vision_tower.vision_tower.*."""
    from safetensors.torch import save_file

    vision, projector, t5, _, _ = vqa_parts
    state = {k: v.clone() for k, v in t5.state_dict().items() if "embed_tokens" not in k}
    state["lm_head.weight"] = state["lm_head.weight"] + lm_head_shift
    state["embed_tokens.weight"] = t5.shared.weight.clone()
    state |= {f"mm_projector.{k}": v.clone() for k, v in projector.state_dict().items()}
    state |= _original_clip_vision_state(vision)
    state |= extra or {}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    keys = sorted(state)
    shards = [{k: state[k] for k in keys[: len(keys) // 2]}, {k: state[k] for k in keys[len(keys) // 2 :]}]
    prefix, suffix = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"{prefix}-0000{i}-of-00002.{suffix}"
        weight_map |= dict.fromkeys(shard, name)
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in shard.items()}, folder / name)
        else:
            torch.save(shard, folder / name)
    (folder / f"{prefix}.{suffix}.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    torch.save(
        {"not": _NotATensor()}, folder / "training_args.bin"
    )  # present in the real repos; never opened
    fields = (
        "vocab_size",
        "d_model",
        "d_kv",
        "d_ff",
        "num_layers",
        "num_decoder_layers",
        "num_heads",
        "feed_forward_proj",
        "pad_token_id",
        "eos_token_id",
        "decoder_start_token_id",
    )
    # FlanT5's config says tie_word_embeddings=false (transformers 5 reads it as "do not rescale outputs").
    config = (
        {f: getattr(t5.config, f) for f in fields}
        | {"tie_word_embeddings": False}
        | {
            "model_type": "clip_t5",
            "mm_hidden_size": 16,
            "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch",
            "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        }
    )
    (folder / "config.json").write_text(json.dumps(config))


def _vqa_folders(
    tmp_path: Path, vqa_parts, fmt: str = "safetensors", lm_head_shift: float = 0.0, **checkpoint
) -> dict:
    """Model, tokenizer and vision-tower folders as ``miro-rewards download vqa`` leaves them."""
    from transformers import CLIPVisionModel

    vision, _, _, tokenizer, _ = vqa_parts
    paths = {name: tmp_path / name for name in ("model", "tokenizer", "vision")}
    for folder in paths.values():
        folder.mkdir()
    _write_clip_t5_checkpoint(paths["model"], vqa_parts, fmt, lm_head_shift, **checkpoint)
    tokenizer.save_pretrained(paths["tokenizer"])
    # The pretrained CLIP tower differs from the checkpoint's copy, which must win (as in the original).
    CLIPVisionModel(vision.config).save_pretrained(paths["vision"])
    processor = CLIP_PROCESSOR | {"crop_size": {"height": 28, "width": 28}, "size": {"shortest_edge": 28}}
    (paths["vision"] / "preprocessor_config.json").write_text(json.dumps(processor))
    return {name: str(folder) for name, folder in paths.items()}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_vqa_loader_reads_the_clip_t5_layout(vqa_parts, tmp_path, fmt):
    reward = VqaReward(paths=_vqa_folders(tmp_path, vqa_parts, fmt))
    assert reward.scorer.preprocess == ImagePreprocess(
        size=28, mode="pad_square", fill=(122, 116, 104), crop_offset="transformers"
    )
    images = _images()
    expected = VqaReward(scorer=ClipT5Scorer(*vqa_parts)).score(images, CAPTIONS)
    torch.testing.assert_close(reward.score(images, CAPTIONS), expected, **TOL)
    # The tower came from the checkpoint's original vision_model.* names, not the pretrained folder.
    torch.testing.assert_close(
        reward.scorer.vision.state_dict()["post_layernorm.weight"],
        vqa_parts[0].state_dict()["post_layernorm.weight"],
    )
    assert reward.scorer.load_report.dropped == {
        "embed_tokens.weight": "alias of T5's shared embedding (tied)",
        "vision_tower.vision_tower.vision_model.embeddings.position_ids": (
            "position-id buffer of older transformers"
        ),
    }


def test_vqa_loader_reads_half_precision_storage(vqa_parts, tmp_path):
    reward = VqaReward(paths=_vqa_folders(tmp_path, vqa_parts, dtype=torch.float16), dtype="float32")
    assert reward.scorer.t5.shared.weight.dtype == torch.float32
    images = _images()
    expected = VqaReward(scorer=ClipT5Scorer(*vqa_parts)).score(images, CAPTIONS)
    torch.testing.assert_close(reward.score(images, CAPTIONS), expected, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({VISION_KEY + "encoder.layers.9.mlp.fc1.bias": torch.ones(3)}, "layers.9"),
        ({"mm_projector.5.weight": torch.zeros(2, 2)}, "mm_projector.5.weight"),
        ({"encoder.block.7.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)}, "encoder.block.7"),
    ],
)
def test_vqa_loader_fails_on_one_line_naming_file_and_key(vqa_parts, tmp_path, extra, message):
    paths = _vqa_folders(tmp_path, vqa_parts, extra=extra)
    with pytest.raises(RewardCheckpointError, match=re.escape(message)) as err:
        VqaReward(paths=paths)
    line = str(err.value)
    assert "\n" not in line and paths["model"] in line and "unexpected key" in line


def test_vqa_loader_keeps_flan_t5s_untied_lm_head(vqa_parts, tmp_path):
    """FlanT5's output layer is not its input embedding; transformers 5 ties them by default."""
    t5 = vqa_parts[2]
    loaded = VqaReward(paths=_vqa_folders(tmp_path, vqa_parts, lm_head_shift=0.5)).scorer.t5
    torch.testing.assert_close(loaded.shared.weight, t5.shared.weight)
    torch.testing.assert_close(loaded.lm_head.weight, t5.lm_head.weight + 0.5)
    assert loaded.encoder.embed_tokens.weight is loaded.shared.weight
    assert getattr(loaded.config, "scale_decoder_outputs", False) is False  # v1.1 T5s do not rescale


def test_vqa_checkpoint_split_and_sizes(vqa_parts):
    parts = split_clip_t5_state(
        iter(
            [
                ("shared.weight", torch.zeros(1)),
                ("embed_tokens.weight", torch.zeros(1)),
                ("mm_projector.0.bias", torch.zeros(1)),
                ("vision_tower.vision_tower.vision_model.post_layernorm.bias", torch.zeros(1)),
            ]
        )
    )
    assert list(parts["t5"]) == ["shared.weight"] and list(parts["projector"]) == ["0.bias"]
    assert list(parts["vision"]) == ["vision_model.post_layernorm.bias"]
    # transformers 5's CLIPVisionModel has no vision_model. level: the original names are fitted to it.
    vision = vqa_parts[0]
    fitted = vision_state({"vision_model.post_layernorm.bias": torch.zeros(16)}, vision)
    assert list(fitted) == ["post_layernorm.bias"]
    assert VqaReward.size_sources("xl") == {
        "model": "zhiqiulin/clip-flant5-xl",
        "tokenizer": "google/flan-t5-xl",
    }
    with pytest.raises(ValueError, match="model_size"):
        VqaReward.size_sources("xxxl")
    with pytest.raises(ValueError, match="projector"):
        build_projector("mlp2x_relu", 4, 4)


# ---------------------------------------------------------------------------------------------------
# clip (JINA CLIP v2; a transformers CLIP model stands in for the remote-code towers)


def test_jina_score_formula_and_preprocessing_settings(clip_tokenizer):
    settings = {
        "size": 32,
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "resize_mode": "shortest",
        "interpolation": "bicubic",
        "fill_color": 0,
    }
    preprocess = preprocess_from_jina(settings)
    assert preprocess == ImagePreprocess(size=32)
    assert preprocess_from_jina(settings | {"resize_mode": "longest"}).mode == "letterbox"
    with pytest.raises(ValueError, match="unsupported"):
        preprocess_from_jina(settings | {"interpolation": "bilinear"})
    model = _hf_clip(11)
    reward = JinaClipReward(scorer=JinaClipScorer(model, clip_tokenizer, preprocess))
    images = _images()
    scores = reward.score(images, CAPTIONS)
    with torch.no_grad():
        tokens = clip_tokenizer(
            CAPTIONS, padding="longest", truncation=True, max_length=1024, return_tensors="pt"
        )
        img = getattr(out := model.get_image_features(pixel_values=preprocess(images)), "pooler_output", out)
        txt = getattr(out := model.get_text_features(**tokens), "pooler_output", out)
        expected = model.logit_scale.exp() * F.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(scores, expected, **TOL)
    assert re.fullmatch(r"[0-9a-f]{40}", REVISION)  # the remote code is pinned to a commit


# ---------------------------------------------------------------------------------------------------
# Names, weights and the CLI


def test_names_and_aliases_resolve():
    expected = {
        "aes": "aesthetic",
        "hpsv2": "hps",
        "ir": "imagereward",
        "pickscore": "pick",
        "vqascore": "vqa",
        "jina": "clip",
        "sciscore": "sci",
    }
    for alias, name in expected.items():
        assert resolve_name(alias) == name == resolve_name(name)


def test_build_reward_passes_a_prebuilt_scorer(tiny_open_clip):
    reward = build_reward("aes", scorer=_aesthetic_scorer(tiny_open_clip), batch_size=4)
    assert isinstance(reward, AestheticReward) and reward.batch_size == 4


@pytest.fixture
def offline_empty(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MIRO_WEIGHTS_DIR", str(tmp_path / "weights"))
    return tmp_path / "weights"


@pytest.mark.parametrize(
    "reward_cls, missing",
    [
        (AestheticReward, "open_clip_model.safetensors"),
        (HpsReward, "HPS_v2.1_compressed.pt"),
        (ImageRewardReward, "ImageReward.pt"),
        (PickReward, "PickScore_v1"),
        (SciReward, "SciScore"),
        (VqaReward, "clip-flant5-xxl"),
        (JinaClipReward, "jina-clip-v2"),
    ],
)
def test_missing_weights_give_one_clear_line(offline_empty, reward_cls, missing):
    with pytest.raises(MissingWeightsError) as info:
        reward_cls()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{reward_cls.name}: ")
    assert missing in message and f"miro-rewards download {reward_cls.name}" in message
    assert str(offline_empty) in message


def test_weights_dirs_follow_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MIRO_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert weights_dir() == tmp_path / "hf" / "miro"
    monkeypatch.setenv("MIRO_WEIGHTS_DIR", str(tmp_path / "w"))
    assert weights_dir() == tmp_path / "w"


def test_cached_files_are_found_offline(offline_empty):
    # A hub file already in the cache (hub layout) and a URL file already downloaded.
    snapshot = offline_empty / "hub" / "models--org--repo" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "w.pt").write_bytes(b"x")
    (offline_empty / "hub" / "models--org--repo" / "refs").mkdir()
    (offline_empty / "hub" / "models--org--repo" / "refs" / "main").write_text("abc123")
    assert hub_file("test", "org/repo", "w.pt").read_bytes() == b"x"
    target = offline_empty / "url" / "test" / "head.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"y")
    assert url_file("test", "https://example.invalid/head.pth", "head.pth") == target
    with pytest.raises(MissingWeightsError, match="other.pth"):
        url_file("test", "https://example.invalid/other.pth", "other.pth")


def test_explicit_paths_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        HpsReward(paths={"checkpoint": str(tmp_path / "nope.pt")})
    with pytest.raises(ValueError, match="unknown weights component"):
        HpsReward(paths={"ckpt": str(tmp_path)})


def test_cli_lists_and_reports_missing_weights(offline_empty, capsys):
    from miro.cli.rewards import main

    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    for text in (
        "aesthetic (aes)",
        "xswu/HPSv2: HPS_v2.1_compressed.pt",
        "zhiqiulin/clip-flant5-xxl",
        "jina-clip-v2",
    ):
        assert text in listing
    assert main(["download", "hps", "aes"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in captured.err
    assert "miro-rewards download hps" in lines[0] and "miro-rewards download aesthetic" in lines[1]
    assert main(["download", "nope"]) == 2
    assert "unknown reward 'nope'" in capsys.readouterr().err


def test_reward_configs_compose():
    from miro.config import compose_config

    cfg = compose_config("rewards/miro7")
    rewards = cfg.rewards
    assert sorted(rewards) == sorted(["aesthetic", "hps", "imagereward", "pick", "vqa", "clip", "sci"])
    for name, spec in rewards.items():
        module, _, attr = spec._target_.rpartition(".")
        cls = getattr(__import__(module, fromlist=[attr]), attr)
        assert cls.name == name
    assert rewards.vqa.model_size == "xxl"
