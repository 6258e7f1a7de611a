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
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import braceexpand
import webdataset as wds

log = logging.getLogger(__name__)

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


class TruncatedShardError(ShardInputError):
    """A shard whose archive ends early (cut inside a member or before its end-of-archive blocks): the
    samples after the cut are lost, so the shard must be re-downloaded or rewritten, never treated as
    complete. Raised after the samples read before the cut have been yielded."""


# Called with (key or member name, reason) for every member left out of a shard as it is read.
ProblemHandler = Callable[[str, str], None]


def _log_problem(key: str, reason: str) -> None:
    log.warning("skipping %s: %s", key, reason)


def unsafe_member_name(name: str) -> bool:
    """An absolute name or one with a ``..`` part: extracting it would write outside the target, so no
    stage reads or writes it (a shard from the web is untrusted input)."""
    return name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/")


def archive_end_is_clean(tar: tarfile.TarFile) -> bool:
    """Whether iteration stopped at an end-of-archive block (512 zero bytes), not at a cut.

    :mod:`tarfile` ends iteration silently at a missing, partial or garbled header once past the first
    member, so a shard cut at a member boundary would otherwise read as a complete, shorter one."""
    fileobj = tar.fileobj
    fileobj.seek(tar.offset)
    block = fileobj.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE


def iter_shard(path: str | Path, on_problem: ProblemHandler | None = None) -> Iterator[Sample]:
    """Raw samples of one shard, in file order, grouped by key (no decoding).

    Reads with :mod:`tarfile` directly rather than a webdataset pipeline: scoring must see every
    sample exactly once and in order, including broken ones, so that it can report them. Left out,
    each passed to ``on_problem(key, reason)`` (default: a warning): a member with an absolute or
    ``../`` name, a second sample under a key already read (the first is kept), a sample with two
    members of the same extension (ambiguous: neither is used). An archive that ends early raises
    :class:`TruncatedShardError` after the complete samples before the cut (the sample being read at
    the cut is not yielded).
    """
    problem = on_problem or _log_problem
    try:
        tar = tarfile.open(path, "r")
    except (OSError, tarfile.TarError, EOFError) as err:
        raise ShardInputError(f"cannot read shard {path}: {err}") from None
    current: Sample | None = None
    seen: set[str] = set()
    skipping: str | None = None  # the key of a duplicate group being left out
    with tar:
        try:
            for member in tar:
                if not member.isfile():
                    continue
                if unsafe_member_name(member.name):
                    problem(member.name, f"unsafe member name {member.name!r} (absolute or ../), not read")
                    continue
                key, ext = split_key(member.name)
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if key == skipping:
                    continue
                skipping = None
                if current is None:
                    if key in seen:
                        problem(key, "duplicate key: a second sample with this key (the first is kept)")
                        skipping = key
                        continue
                    seen.add(key)
                    current = {"__key__": key}
                if ext in current:  # which of the two is the sample's? Neither is used.
                    problem(key, f"duplicate member {member.name!r}: the sample is ambiguous")
                    current, skipping = None, key
                    continue
                handle = tar.extractfile(member)
                current[ext] = handle.read() if handle is not None else b""
            clean = archive_end_is_clean(tar)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise TruncatedShardError(f"shard {path} is truncated or damaged: {err}") from None
        if not clean:
            raise TruncatedShardError(
                f"shard {path} is truncated: the archive ends at byte {tar.offset} without its "
                "end-of-archive block (cut at a member header)"
            )
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
    if path.is_dir():
        raise ShardInputError(f"cannot write {path}: it is a directory; name a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # nothing half-written stays behind, whatever stopped the write
        tmp.unlink(missing_ok=True)
        raise


def write_json_and_markdown(out_dir: str | Path, stem: str, data: Any, markdown: str) -> dict[str, Path]:
    """A result as ``<stem>.json`` (for programs) and ``<stem>.md`` (for people), each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    write_bytes_atomic(paths["json"], json.dumps(data, indent=2).encode())
    write_bytes_atomic(paths["markdown"], markdown.encode())
    return paths


def encode_jpeg(image, quality: int = 95) -> bytes:
    """PIL image -> JPEG bytes (fixed settings, so encoding is deterministic)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()
