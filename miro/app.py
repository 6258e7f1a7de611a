"""The web app (``miro-app``): a slider per reward, so that MIRO's point, that reward levels are knobs,
can be seen by turning them.

Generation runs only through :class:`miro.pipeline.MiroPipeline`, and every image gets the record
``miro-generate`` writes (:func:`miro.cli.generate.image_record`), downloadable as JSON, so any image
shown can be made again from the command line. The side-by-side mode generates the same seeds at a
second reward setting. The UI is Gradio (the optional extra ``pip install ".[app]"``); it binds to the
loopback address unless told otherwise, and sends no telemetry.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from miro.cli.generate import image_record
from miro.model_card import model_display_name
from miro.pipeline import MODEL_DEFAULT, TARGET_MAX, MiroPipeline, RewardSpecError
from miro.utils.hardware import compute_record

NO_PUSH = "none"
DISPLAY_SIZE = 256  # small models draw tiny images: the gallery shows them enlarged (nearest neighbour)


class AppInputError(ValueError):
    """A bad value in the form; shown as a message in the page, never as an error page."""


@dataclass
class Generation:
    """One reward setting's images, each with its miro-generate record, and how long they took."""

    images: list[Image.Image]
    records: list[dict[str, Any]]
    seconds: float


@dataclass
class AppModel:
    """The loaded model and what the app needs around it: where JSON downloads go, and the measured
    cost of one image-step, so the page can say how long a request will take before it is done."""

    pipe: MiroPipeline
    checkpoint: str
    max_images: int = 8
    out_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="miro-app-")))
    seconds_per_image_step: float | None = None
    _requests: int = 0

    @property
    def reward_names(self) -> list[str]:
        return list(self.pipe.reward_names)

    @property
    def name(self) -> str:
        """The run's name for a local export, the repo id for a Hub model."""
        return model_display_name(self.checkpoint) if Path(self.checkpoint).exists() else self.checkpoint

    def estimate(self, n_images: int, steps: int) -> float | None:
        if self.seconds_per_image_step is None:
            return None
        return self.seconds_per_image_step * n_images * steps

    def generate(
        self, prompt: str, targets: Mapping[str, float], negative_prompt: str | None = None,
        pushed: str | None = None, guidance: float | None = None, steps: int | None = None, seed: int = 0,
        n: int = 1,
    ) -> Generation:
        """``n`` images of ``prompt`` at ``targets`` (0-10 by reward name), seeds seed..seed+n-1.

        ``negative_prompt`` blank: the model's own negative caption, as ``miro-generate`` without
        ``--negative-prompt``; ``pushed``: a reward name for the pipeline's ``push=`` (the negative branch
        copies the targets with that reward at 0), or "none"."""
        prompt = (prompt or "").strip()
        if not prompt:
            raise AppInputError("Enter a prompt to generate images.")
        if not 1 <= int(n) <= self.max_images:
            raise AppInputError(f"Number of images must be between 1 and {self.max_images}, got {n}.")
        if steps is not None and int(steps) < 1:
            raise AppInputError(f"Steps must be at least 1, got {steps}.")
        names = self.reward_names
        # Exactly what the pipeline is asked, so the images and the record come from one request.
        request: dict[str, Any] = {
            "rewards": {name: float(targets.get(name, TARGET_MAX)) for name in names} if names else None,
            "push": None if pushed in (None, "", NO_PUSH) else pushed,
            "negative_prompt": negative_prompt.strip() if negative_prompt and negative_prompt.strip()
            else MODEL_DEFAULT,
            "guidance": guidance,
            "steps": None if steps is None else int(steps),
        }
        try:
            used = self.pipe.resolve(**request)
        except (RewardSpecError, ValueError) as err:
            raise AppInputError(str(err)) from None
        seeds = [int(seed) + i for i in range(int(n))]
        start = time.perf_counter()
        images = self.pipe([prompt] * len(seeds), seed=seeds, **request)
        seconds = time.perf_counter() - start
        self.seconds_per_image_step = seconds / (len(seeds) * used["steps"])
        compute = compute_record(self.pipe.precision_choice, None)
        common = image_record(self.pipe, self.checkpoint, used, compute)
        records = [{"prompt": prompt, "seed": s, **common} for s in seeds]
        return Generation(list(images), records, seconds)

    def save_records(self, generations: Mapping[str, Generation]) -> list[str]:
        """Each image's record as ``<setting>_<seed>.json`` in a new folder of this app's temp dir."""
        self._requests += 1
        folder = self.out_dir / f"request{self._requests:05d}"
        folder.mkdir(parents=True)
        paths = []
        for label, gen in generations.items():
            for record in gen.records:
                path = folder / f"{label}_seed{record['seed']}.json"
                path.write_text(json.dumps(record, indent=2) + "\n")
                paths.append(str(path))
        return paths

    def close(self) -> None:
        shutil.rmtree(self.out_dir, ignore_errors=True)


def enlarged(image: Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """``image`` scaled by a whole factor (nearest neighbour) to at least ``size`` pixels wide."""
    factor = max(1, math.ceil(size / image.width))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def build_app(model: AppModel) -> Any:
    """The Gradio Blocks of the app (launch it with :func:`launch`)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    names = model.reward_names
    defaults = model.pipe.sampling()
    size = model.pipe.pretrained.image_size
    with gr.Blocks(title=f"MIRO: {model.name}", analytics_enabled=False) as demo:
        gr.Markdown(
            f"## MIRO: {model.name}\n"
            f"{size} px images; one slider per reward the model was trained with (0 = its lowest level in "
            "the training data, 10 = its top level). Sampling defaults: guidance "
            f"{defaults['guidance']:g}, {defaults['steps']} steps. Model: `{model.checkpoint}`"
        )
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", placeholder="a red circle", elem_id="prompt")
                negative_prompt = gr.Textbox(
                    label=f"Negative prompt (blank: the model's, {_negative_caption(defaults)})",
                    elem_id="negative-prompt",
                )
                with gr.Group():
                    gr.Markdown("**Reward targets** (setting A)")
                    sliders_a = [_slider(gr, name, "a") for name in names]
                push = gr.Dropdown(
                    [NO_PUSH, *names], value=NO_PUSH, label="Push one reward",
                    info="guidance against the same targets with only this reward at 0",
                    elem_id="push",
                )
                with gr.Row():
                    guidance = gr.Slider(0, 10, value=defaults["guidance"], step=0.1, label="Guidance scale",
                                         elem_id="guidance")
                    steps = gr.Slider(1, 100, value=defaults["steps"], step=1, label="Steps", elem_id="steps")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    n_images = gr.Slider(1, model.max_images, value=min(4, model.max_images), step=1,
                                         label="Images", elem_id="n-images")
                side_by_side = gr.Checkbox(
                    label="Side by side: the same seeds at a second reward setting (B)",
                    elem_id="side-by-side",
                )
                with gr.Group(visible=False) as group_b:
                    gr.Markdown("**Reward targets, setting B**")
                    sliders_b = [_slider(gr, name, "b") for name in names]
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                with gr.Row():
                    gallery_a = gr.Gallery(label="A", columns=4, format="png", elem_id="gallery-a")
                    gallery_b = gr.Gallery(label="B", columns=4, format="png", elem_id="gallery-b",
                                           visible=False)
                records = gr.File(label="Each image's JSON (as miro-generate writes it)",
                                  file_count="multiple", elem_id="records")

        side_by_side.change(lambda on: (gr.update(visible=on), gr.update(visible=on)), side_by_side,
                            [group_b, gallery_b])

        def respond(*values: Any):  # a generator: the first message shows while the images are made
            text, neg, *rest = values
            a = dict(zip(names, rest[: len(names)], strict=True))
            pushed, w, k, s, n, both, *b_values = rest[len(names) :]
            b = dict(zip(names, b_values, strict=True))
            settings = {"A": a, "B": b} if both else {"A": a}
            if not (text or "").strip():
                yield "**Enter a prompt** to generate images.", [], [], None
                return
            estimate = model.estimate(int(n) * len(settings), int(k))
            about = f", about {estimate:.1f} s" if estimate is not None else ""
            yield (f"Generating {int(n) * len(settings)} image(s) at {int(k)} steps{about}...",
                   gr.skip(), gr.skip(), gr.skip())
            try:
                done = {label: model.generate(text, targets, neg, pushed, w, k, s, n)
                        for label, targets in settings.items()}
            except AppInputError as err:
                yield f"**{err}**", [], [], None
                return
            seconds = sum(g.seconds for g in done.values())
            galleries = [
                [(enlarged(img), f"{label}, seed {rec['seed']}")
                 for img, rec in zip(g.images, g.records, strict=True)]
                for label, g in done.items()
            ]
            total = sum(len(g.images) for g in done.values())
            yield (f"Generated {total} image(s) in {seconds:.1f} s.", galleries[0],
                   galleries[1] if len(galleries) > 1 else [], model.save_records(done))

        inputs = [prompt, negative_prompt, *sliders_a, push, guidance, steps, seed, n_images, side_by_side,
                  *sliders_b]
        outputs = [status, gallery_a, gallery_b, records]
        run.click(respond, inputs, outputs)
        prompt.submit(respond, inputs, outputs)
    return demo


def _negative_caption(sampling: Mapping[str, Any]) -> str:
    """The model's default negative caption, in words."""
    caption = sampling.get("negative_prompt")
    if caption is None:
        return "the prompt itself, as MIRO samples"
    return "the empty prompt" if caption == "" else repr(caption)


def _slider(gr: Any, name: str, setting: str) -> Any:
    return gr.Slider(0, TARGET_MAX, value=TARGET_MAX, step=0.5, label=name,
                     elem_id=f"target-{setting}-{name}")


def launch(model: AppModel, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> Any:
    """Serve the app and print its URL; returns the running Blocks (``block=False``: at once, for tests;
    else when the server stops). ``port=None``: the first free port from 7860."""
    demo = build_app(model)
    demo.queue(default_concurrency_limit=1)  # one generation at a time: a model uses every core it has
    demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True,
                ssr_mode=False, show_error=False, quiet=True, footer_links=[])
    if block:
        print(f"miro-app: {model.name} on {demo.local_url} (Ctrl+C stops it)", flush=True)
        demo.block_thread()
    return demo
