"""A captioning vision-language model loaded through transformers, for synthetic captions.

MIRO's GenEval 57 -> 68 came from training on synthetic captions beside the web's. Any model that
``AutoModelForImageTextToText`` loads can write them (BLIP, Florence-2, PaliGemma, ...); which one is a
config choice (``conf/caption_shards.yaml``). Loading never runs downloaded code
(``trust_remote_code=False``) and reads weights only from safetensors, never from a pickle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image


class CaptionerError(ValueError):
    """A captioner that cannot be loaded or used; the message names the model and the problem."""


class HFCaptioner:
    """``HFCaptioner("Salesforce/blip-image-captioning-large")(images) -> captions``.

    ``prompt``: text the model continues (BLIP: "a picture of"), or an instruction for instruction-tuned
    VLMs (Florence-2: "<MORE_DETAILED_CAPTION>"); it is removed from the output when the model repeats
    it. Greedy or beam search (``num_beams``), never sampling, so a rerun writes the same captions.
    """

    def __init__(
        self,
        model_name_or_path: str,
        prompt: str | None = None,
        max_new_tokens: int = 60,
        num_beams: int = 1,
        device: str = "cpu",
        dtype: str = "float32",
        revision: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise CaptionerError(
                f"captioner dtype must be a torch dtype name (float32, bfloat16), got {dtype!r}"
            )
        if max_new_tokens < 1 or num_beams < 1:
            raise CaptionerError(
                f"max_new_tokens and num_beams must be >= 1, got {max_new_tokens}, {num_beams}"
            )
        common = {"revision": revision, "local_files_only": local_files_only, "trust_remote_code": False}
        try:
            self.processor = AutoProcessor.from_pretrained(model_name_or_path, **common)
            self.model = AutoModelForImageTextToText.from_pretrained(
                model_name_or_path, dtype=torch_dtype, use_safetensors=True, **common
            )
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CaptionerError(f"cannot load captioner {model_name_or_path!r}: {first}") from None
        self.model = self.model.to(device).eval()
        self.name = str(model_name_or_path)
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.device = torch.device(device)
        self.dtype = torch_dtype

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        images = [im.convert("RGB") for im in images]
        kwargs = {"images": images, "return_tensors": "pt"}
        if self.prompt is not None:
            kwargs["text"] = [self.prompt] * len(images)
        inputs = self.processor(**kwargs).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        out = self.model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
        )
        prompt_ids = inputs.get("input_ids")
        if prompt_ids is not None and out.shape[1] > prompt_ids.shape[1]:
            if torch.equal(out[:, : prompt_ids.shape[1]], prompt_ids.to(out.device)):
                out = out[:, prompt_ids.shape[1] :]  # a decoder-only VLM echoes its prompt tokens
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [self._strip_prompt(t) for t in texts]

    def _strip_prompt(self, text: str) -> str:
        text = " ".join(text.split())
        if self.prompt and text.lower().startswith(self.prompt.lower()):
            text = text[len(self.prompt) :].strip()
        return text
