"""``make parity``: every comparable MIRO reward against its original implementation.

1. Inputs (MIRO's venv): the generated PNGs and captions, and the CLIP BPE vocabulary (open_clip ships
   it) written as transformers tokenizer files, so every side tokenizes with the same real vocabulary.
2. Originals (``.parity/venv-*``, built by parity/setup_venvs.sh): each script in parity/originals builds
   the original's own classes at a tiny size, saves the official checkpoint layout, scores the inputs.
3. MIRO: :mod:`parity.ours` loads the same files through MIRO's loaders and scores the same inputs.

Writes ``<work>/results.json`` and ``<work>/results.md`` (the table committed in docs/rewards.md) and
exits 1 if a comparable reward is out of tolerance.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from parity.common import package_versions, write_inputs
from parity.compare import ParityRow, markdown_table

# reward -> (venv, script module, what the original is)
ORIGINALS = {
    "imagereward": ("imagereward", "parity.originals.imagereward", "image-reward 1.5 `ImageReward.score`"),
    "aesthetic": ("imagereward", "parity.originals.aesthetic", "openai-clip 1.0.1 + LAION MLP"),
    "hps": ("hpsv2", "parity.originals.hps", "hpsv2 1.2.0 `img_score` + its open_clip"),
    "pick": ("hpsv2", "parity.originals.hfclip", "model card: transformers 4.49 CLIPModel"),
    "sci": ("hpsv2", "parity.originals.hfclip", "model card: transformers 4.49 CLIPModel"),
    "vqa": ("t2v", "parity.originals.vqa", "t2v-metrics 3.0 `CLIPT5Model.forward`"),
}
NOT_RUN = {
    "clip": ("jina-clip-v2 (remote code on the hub)", "cannot be run offline; settings/formula tested"),
}


def write_clip_bpe(folder: Path) -> None:
    """open_clip's BPE merges as ``vocab.json`` + ``merges.txt`` (the layout of CLIP repos on the hub)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


def run_original(parity_dir: Path, venv: str, module: str, work: Path) -> None:
    python = parity_dir / f"venv-{venv}" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"parity: {python} is missing; run parity/setup_venvs.sh (make parity does)")
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    subprocess.run([str(python), "-m", module, str(work)], check=True, env=env, cwd=repo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parity-dir", default=".parity", type=Path)
    parser.add_argument("--only", default="", help="comma-separated rewards (default: all comparable)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from parity.ours import _register_open_clip, compare

    work = args.parity_dir / "work"
    write_inputs(work / "inputs")
    write_clip_bpe(work / "clip_bpe")
    _register_open_clip(work / "open_clip_configs")
    wanted = [r for r in (args.only.split(",") if args.only else ORIGINALS) if r]
    done_modules: set[str] = set()
    rows, versions = [], package_versions("torch", "transformers", "open_clip_torch", "pillow")
    versions = {f"MIRO {k}": v for k, v in versions.items()}
    for reward in wanted:
        venv, module, what = ORIGINALS[reward]
        if module not in done_modules:
            print(f"parity: {reward}: running the original ({module} in venv-{venv})", flush=True)
            run_original(args.parity_dir, venv, module, work)
            done_modules.add(module)
        row = compare(reward, what, work)
        original = torch.load(work / reward / "original.pt", weights_only=True)["versions"]
        versions |= {f"{reward} side {k}": v for k, v in original.items() if k != "clip module"}
        rows.append(row)
        print(
            f"parity: {reward}: end to end {row.end_to_end}, model only {row.model_only}, "
            f"grey levels {row.grey_levels}, strict {row.strict} {row.note}",
            flush=True,
        )
    for reward, (what, why) in NOT_RUN.items():
        rows.append(ParityRow(reward=reward, original=what, note=why))
    table = markdown_table(rows, versions)
    (work / "results.md").write_text(table + "\n")
    (work / "results.json").write_text(
        json.dumps([{**r.__dict__, "passed": r.passed()} for r in rows], indent=2, default=str)
    )
    print(table)
    return 1 if any(r.passed() is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
