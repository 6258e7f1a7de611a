"""WebDataset shard I/O in the img2dataset layout (``KEY.jpg``, ``KEY.txt``, ``KEY.json``, ...).

Two rules every stage relies on:

* Shards are written to ``NAME.tmp`` and renamed only when complete, so a killed run never leaves a
  half-written shard that a later run would mistake for finished output.
* Writing is deterministic (fixed mtime, owner and mode, samples in input order), so re-running a
  stage yields byte-identical shards.
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import braceexpand
import webdataset as wds

Sample = dict[str, bytes | str]  # "__key__" -> str, extension -> raw bytes

# The image fields of an img2dataset sample, in the order they are looked for.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardInputError(ValueError):
    """Input shards that do not exist or cannot be read; the message names the path."""


def expand_shards(pattern: str | list[str]) -> list[str]:
    """Brace patterns (``data/{00000..00009}.tar``), globs or lists -> sorted list of existing files."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    paths: list[str] = []
    for pat in patterns:
        for expanded in braceexpand.braceexpand(str(pat)):
            matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else [expanded]
            if not matches:
                raise ShardInputError(f"no shard matches {expanded!r}")
            for path in matches:
                if os.path.isdir(path):
                    paths.extend(sorted(glob.glob(os.path.join(path, "*.tar"))))
                elif not os.path.exists(path):
                    raise ShardInputError(f"shard not found: {path}")
                else:
                    paths.append(path)
    if not paths:
        raise ShardInputError(f"no shards found for {pattern!r}")
    return sorted(dict.fromkeys(paths))


def iter_shard(path: str | Path) -> Iterator[Sample]:
    """Raw samples of one shard, in file order, grouped by key (no decoding).

    Reads with :mod:`tarfile` directly rather than a webdataset pipeline: scoring must see every
    sample exactly once and in order, including broken ones, so that it can report them.
    """
    try:
        tar = tarfile.open(path, "r")
    except (OSError, tarfile.TarError) as err:
        raise ShardInputError(f"cannot read shard {path}: {err}") from None
    current: Sample | None = None
    with tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_key(member.name)
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key}
            handle = tar.extractfile(member)
            current[ext] = handle.read() if handle is not None else b""
        if current is not None:
            yield current


def split_key(member_name: str) -> tuple[str, str]:
    """``dir/000123.rewards.json`` -> (``dir/000123``, ``rewards.json``), as webdataset splits keys."""
    directory, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext


@contextmanager
def atomic_shard_writer(path: str | Path) -> Iterator[wds.TarWriter]:
    """A deterministic :class:`webdataset.TarWriter` that appears at ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    stream = open(tmp, "wb")
    writer = wds.TarWriter(stream, encoder=False, mtime=0.0, user="miro", group="miro", mode=0o644)
    try:
        yield writer
        writer.close()
        stream.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        stream.close()
        tmp.unlink(missing_ok=True)
        raise


def file_fingerprint(path: str | Path) -> str:
    """``size:mtime_ns`` of a file: cheap to take on shards of any size, and it changes whenever the file
    is rewritten, so a stage can tell that an output was made from an older version of its input."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write a small file (a report, bins.json) via a temporary name and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def encode_jpeg(image, quality: int = 95) -> bytes:
    """PIL image -> JPEG bytes (fixed settings, so encoding is deterministic)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()
