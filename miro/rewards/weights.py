"""Where reward weights live, how they are fetched, and the one error raised when they are missing.

Scoring machines are often offline, so every loader looks on disk first and only then tries the
network; ``miro-rewards download NAME`` runs the same code ahead of time on a machine with internet.

Layout:

* Hugging Face hub files go to the hub cache: ``$MIRO_WEIGHTS_DIR/hub`` when ``MIRO_WEIGHTS_DIR`` is set,
  otherwise Hugging Face's own cache (which honours ``HF_HOME`` / ``HF_HUB_CACHE``), so weights already
  fetched by other tools are reused.
* Plain URLs (the LAION aesthetic head lives on GitHub, not on the hub) go to
  ``$MIRO_WEIGHTS_DIR/url`` or ``$HF_HOME/miro`` (``~/.cache/huggingface/miro`` by default).

``HF_HUB_OFFLINE=1`` forbids all network access, URLs included: a missing file then fails at once.
The environment is read on every call (not at import), so a test or a CLI flag can change it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "MIRO_WEIGHTS_DIR"
_T = TypeVar("_T")


class MissingWeightsError(RuntimeError):
    """A reward's weights are not on disk and could not be fetched; the message is one sentence."""

    def __init__(self, reward: str, what: str, where: str | Path) -> None:
        self.reward, self.what, self.where = reward, what, str(where)
        super().__init__(
            f"{reward}: {what} is not in {where} and could not be downloaded; run "
            f"`miro-rewards download {reward}` on a machine with internet and copy the folder here "
            f"(or point {WEIGHTS_DIR_ENV} at a copy)"
        )


@dataclass(frozen=True)
class WeightFile:
    """One thing a reward needs from the outside world.

    ``kind``: ``"file"`` (one hub file), ``"model"`` (a transformers model folder: config plus
    safetensors, falling back to pickled ``.bin`` shards only when a repo has no safetensors),
    ``"files"`` (hub files matching ``patterns``; each name in ``required`` must be among them) or
    ``"url"`` (a plain download stored as ``filename``).
    """

    kind: str
    source: str  # hub repo id, or a URL
    filename: str = ""
    patterns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    revision: str | None = None
    purpose: str = ""

    def describe(self) -> str:
        at = f"@{self.revision[:10]}" if self.revision else ""
        if self.kind == "url":
            return f"{self.source} -> {self.filename}"
        what = {"file": self.filename, "model": "config + weights", "files": ", ".join(self.patterns)}[
            self.kind
        ]
        return f"{self.source}{at}: {what}"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hf_home() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")


def weights_dir() -> Path:
    """Root for files MIRO stores itself (URL downloads)."""
    root = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(root) if root else hf_home() / "miro"


def hub_cache_dir() -> Path | None:
    """Hub cache to use: ``$MIRO_WEIGHTS_DIR/hub``, or None for Hugging Face's default."""
    root = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(root) / "hub" if root else None


def hub_cache_display() -> str:
    cache = hub_cache_dir()
    if cache is not None:
        return str(cache)
    return os.environ.get("HF_HUB_CACHE") or str(hf_home() / "hub")


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError)


def local_then_remote(reward: str, what: str, fetch: Callable[[bool], _T], where: str | Path) -> _T:
    """``fetch(local_files_only)`` from the cache, then (unless offline) from the network.

    Trying the cache first keeps an offline machine from waiting on network timeouts and avoids a
    metadata request per file when everything is already there.
    """
    errors = _hub_errors()
    try:
        return fetch(True)
    except errors as err:
        log.debug("%s: %s not cached (%s)", reward, what, err)
    if offline():
        raise MissingWeightsError(reward, what, where)
    try:
        return fetch(False)
    except errors as err:
        log.debug("%s: fetching %s failed (%s)", reward, what, err)
        raise MissingWeightsError(reward, what, where) from err


def hub_file(reward: str, repo_id: str, filename: str, revision: str | None = None) -> Path:
    """Local path of one hub file, downloading it if needed and allowed."""
    from huggingface_hub import hf_hub_download

    def fetch(local_only: bool) -> Path:
        return Path(
            hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=hub_cache_dir(), local_files_only=local_only
            )
        )

    return local_then_remote(reward, f"{repo_id}/{filename}", fetch, hub_cache_display())


def hub_snapshot(
    reward: str,
    repo_id: str,
    patterns: Iterable[str],
    required: Callable[[Path], bool],
    revision: str | None = None,
) -> Path:
    """Local folder with a repo's files matching ``patterns``; ``required(folder)`` says it is complete.

    The completeness check matters offline: a cached snapshot folder can exist with some files missing.
    """
    from huggingface_hub import snapshot_download

    patterns = list(patterns)

    def fetch(local_only: bool) -> Path:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=patterns,
                cache_dir=hub_cache_dir(),
                local_files_only=local_only,
            )
        )
        if not required(folder):
            raise FileNotFoundError(f"{repo_id} snapshot at {folder} is incomplete")
        return folder

    return local_then_remote(reward, f"{repo_id} ({', '.join(patterns)})", fetch, hub_cache_display())


def url_file(reward: str, url: str, filename: str, timeout: float = 60.0) -> Path:
    """Local copy of ``url`` under ``weights_dir()/url/<reward>/filename``; written atomically."""
    target = weights_dir() / "url" / reward / filename
    if target.is_file():
        return target
    if offline():
        raise MissingWeightsError(reward, filename, target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            shutil.copyfileobj(response, out)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError) as err:
        log.debug("%s: download of %s failed (%s)", reward, url, err)
        raise MissingWeightsError(reward, filename, target.parent) from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_MODEL_PATTERNS = ("*.json", "*.txt", "*.model")


def hub_model_folder(reward: str, repo_id: str, revision: str | None = None) -> Path:
    """A transformers model folder (configs, tokenizer files, weights): safetensors first, ``.bin`` if none.

    Pickled ``.bin`` weights are only fetched for repos that publish no safetensors; transformers loads
    them with ``weights_only=True``.
    """
    try:
        return hub_snapshot(reward, repo_id, (*_MODEL_PATTERNS, "model*.safetensors"), has_weights, revision)
    except MissingWeightsError:
        if offline():
            raise
    return hub_snapshot(reward, repo_id, (*_MODEL_PATTERNS, "pytorch_model*.bin"), has_weights, revision)


def fetch(reward: str, spec: WeightFile) -> Path:
    """Resolve one :class:`WeightFile` to a local path (used by the loaders and ``miro-rewards download``)."""
    if spec.kind == "url":
        return url_file(reward, spec.source, spec.filename)
    if spec.kind == "file":
        return hub_file(reward, spec.source, spec.filename, spec.revision)
    if spec.kind == "model":
        return hub_model_folder(reward, spec.source, spec.revision)
    if spec.kind == "files":
        return hub_snapshot(
            reward,
            spec.source,
            spec.patterns,
            lambda d: all((d / n).is_file() for n in spec.required),
            spec.revision,
        )
    raise ValueError(f"{reward}: unknown weight kind {spec.kind!r} for {spec.source}")


def has_weights(folder: Path) -> bool:
    """A transformers-style folder holds a config and weights under transformers' standard names.

    Other pickles in a repo (``training_args.bin``) are never fetched or loaded.
    """
    return (folder / "config.json").is_file() and any(
        any(folder.glob(pattern)) for pattern in ("model*.safetensors", "pytorch_model*.bin")
    )


__all__ = [
    "MissingWeightsError",
    "WeightFile",
    "fetch",
    "has_weights",
    "hub_cache_dir",
    "hub_file",
    "hub_model_folder",
    "hub_snapshot",
    "local_then_remote",
    "offline",
    "url_file",
    "weights_dir",
]
