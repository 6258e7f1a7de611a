"""The saved runs a report reads, packed into one archive that is committed beside the report.

A study's runs directory holds gigabytes (checkpoints, weights, logs); the report reads a few megabytes of
it: every evaluation's results.json, the exports' and GRPO runs' config.json, the GRPO runs' config.yaml
and the step log. ``make report ARGS=--pack`` packs exactly those into ``cfg.archive``
(docs/results/runs-cpu.tar.gz), so that a fresh clone's ``make report`` unpacks them into the (empty)
runs directory and regenerates the committed report from the measured data, not from a copy of its text.

The archive is data only: JSON, YAML read by OmegaConf's safe loader, JSON lines; members are checked by
name and type before anything is written, and extraction uses tarfile's ``data`` filter (no links, no
paths outside the runs directory, no device files). The model weights are not packed; the one number the
report takes from them (the DiT's parameter count) travels in the archive's manifest.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any

from miro.shapes.study.plan import Study
from miro.shapes.study.results import MANIFEST, count_parameters

# What a report reads (and so all an archive may hold), by file name.
PACKED_NAMES = frozenset({"results.json", "config.json", "config.yaml", "steps.jsonl", MANIFEST})


class ArchiveError(ValueError):
    """An archive that is not a study's packed runs, or that would overwrite runs; one line."""


def report_inputs(study: Study) -> list[Path]:
    """The files under the study's root that its report reads and that exist, sorted."""
    lay = study.layout
    found: set[Path] = set()
    for step in study.steps():
        if step.study != "data" and step.output.is_file():
            found.add(step.output)
    for seed in study.seeds:
        for variant in study.cfg.grpo.variants:
            config = lay.grpo_run(seed, variant) / "config.yaml"
            if config.is_file():
                found.add(config)
    if lay.step_log.is_file():
        found.add(lay.step_log)
    return sorted(found)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # the same runs give the same bytes
    tar.addfile(info, io.BytesIO(data))


def pack(study: Study, archive: str | Path) -> Path:
    """Write ``archive`` (tar.gz; written to a temporary name, then renamed) with the report's inputs,
    relative to the runs directory, and a manifest; returns its path."""
    root, archive = study.layout.root, Path(archive)
    files = report_inputs(study)
    if not any(f.name == "results.json" for f in files):
        raise ArchiveError(f"no evaluations under {root} to pack; make report REPORT_RUN=1 runs them first")
    manifest: dict[str, Any] = {
        "scale": str(study.cfg.scale),
        "seeds": study.seeds,
        "runs_dir": str(root),
        "parameters": count_parameters(study.layout.export(study.seeds[0], "miro")),
        "files": [f.relative_to(root).as_posix() for f in files],
    }
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            _add(tar, MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
            for f in files:
                _add(tar, f.relative_to(root).as_posix(), f.read_bytes())
    tmp.replace(archive)
    return archive


def _check_members(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        path = PurePosixPath(m.name)
        if not m.isfile() or path.is_absolute() or ".." in path.parts or path.name not in PACKED_NAMES:
            raise ArchiveError(
                f"{archive}: member {m.name!r} is not a packed run file (only regular files named "
                f"{', '.join(sorted(PACKED_NAMES))} inside the runs directory)"
            )
    if not any(m.name == MANIFEST for m in members):
        raise ArchiveError(f"{archive}: no {MANIFEST}; not an archive written by make report ARGS=--pack")
    return members


def unpack(archive: str | Path, root: str | Path) -> int:
    """Extract ``archive`` into the runs directory ``root``, which must hold no runs yet (an archive
    never overwrites measured runs); returns the number of files written."""
    archive, root = Path(archive), Path(root)
    if root.is_dir() and any(root.iterdir()):
        raise ArchiveError(f"{root} already holds runs; unpack {archive} only into an empty directory")
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = _check_members(archive, tar)
            root.mkdir(parents=True, exist_ok=True)
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ArchiveError(f"{archive}: cannot read it as the study's packed runs ({err})") from None
    return len(members)
