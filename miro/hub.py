"""Model directories on the Hugging Face Hub: one resolver from "path or repo id" to a local directory,
and the upload of an export.

Every loader (``MiroPipeline.from_pretrained``, ``miro-generate``, ``miro-eval``, ``miro-app``,
``miro.rl pretrained=``) goes through :func:`resolve_model_dir` (called at the top of
:func:`miro.pretrained.load_pretrained`), so "a model" means the same thing everywhere: an existing local
path wins; otherwise a string shaped like ``owner/name`` (optionally ``owner/name@revision``) is fetched
with ``huggingface_hub.snapshot_download``. That library owns the cache (``HF_HUB_CACHE`` / ``HF_HOME``),
offline mode (``HF_HUB_OFFLINE=1``: the cache only, no network) and tokens (``HF_TOKEN``,
``hf auth login``); nothing here re-implements them. Only the files of a MIRO export are downloaded, and
the weights are safetensors, so opening a downloaded model never runs its code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from miro.pretrained import CONFIG, WEIGHTS, CheckpointError

CARD = "README.md"
# What a MIRO export consists of on the Hub; anything else in a repository is never downloaded.
HUB_FILES = [CONFIG, WEIGHTS, CARD]
# owner/name as the Hub spells them (letters, digits, "-", "_", "."), optionally @revision (a branch,
# tag or commit; may contain "/", e.g. refs/pr/1).
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>\S+))?")


def split_hub_id(source: str, revision: str | None = None) -> tuple[str, str | None] | None:
    """``"owner/name@rev"`` -> ("owner/name", "rev"); None for a string that cannot be a repo id.

    A revision given both ways must agree: silently preferring one would load a model the user did not
    ask for."""
    match = _HUB_ID.fullmatch(source.strip())
    if match is None:
        return None
    in_id = match.group("revision")
    if in_id is not None and revision is not None and in_id != revision:
        raise CheckpointError(f"{source}: revision {in_id!r} in the id differs from revision={revision!r}")
    return match.group("repo"), in_id if in_id is not None else revision


def resolve_model_dir(source: str | Path, revision: str | None = None) -> Path:
    """A local model directory for ``source``: the path itself when it exists, else the Hub snapshot of
    the repo id (downloaded, or from the cache). Every failure is one :class:`CheckpointError` line.

    ``Path`` objects are always local: only a string can name a Hub repository.
    """
    local = Path(source)
    if local.exists() or isinstance(source, Path):
        if revision is not None:
            raise CheckpointError(
                f"{source}: revision={revision!r} is only for Hub repo ids, not local paths"
            )
        return local
    parsed = split_hub_id(str(source), revision)
    if parsed is None:  # a missing local path: load_pretrained says so, in its own words
        if revision is not None:
            raise CheckpointError(
                f"{source}: no such model directory, and revision={revision!r} is only for Hub repo ids"
            )
        return local
    repo_id, rev = parsed
    return Path(_snapshot(repo_id, rev, str(source)))


def _snapshot(repo_id: str, revision: str | None, source: str) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, library_name="miro")
    except HFValidationError as err:
        raise CheckpointError(
            f"{source}: not a model directory nor a valid Hub repo id ({_line(err)})"
        ) from None
    except GatedRepoError:
        raise CheckpointError(
            f"{repo_id}: a gated Hub repository; accept its terms on the Hub and log in "
            "(hf auth login or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{source}: no such local model directory, and no Hub repository {repo_id!r} "
            "(or it is private: log in with hf auth login or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: no revision {revision!r} on the Hub") from None
    except LocalEntryNotFoundError:
        where = f"no such local model directory, and {at} is not in the local Hub cache"
        where += f" ({constants.HF_HUB_CACHE})"
        if constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{source}: {where}; HF_HUB_OFFLINE is set, so nothing is downloaded"
            ) from None
        raise CheckpointError(f"{source}: {where}, and the Hub cannot be reached") from None
    except (HfHubHTTPError, OSError) as err:
        raise CheckpointError(f"{at}: download from the Hub failed ({_line(err)})") from None


def push_export(
    export_dir: str | Path,
    repo_id: str,
    revision: str | None = None,
    private: bool | None = None,
    message: str | None = None,
    token: str | None = None,
    api: Any = None,
) -> str:
    """Upload the files of an export (:data:`HUB_FILES`) to ``repo_id`` (created when missing; the branch
    ``revision`` too); returns the commit's URL. ``api`` is an ``HfApi``-like object (default: a new
    ``HfApi(token=token)``, which also finds a logged-in token by itself)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    root = Path(export_dir)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(root), repo_id=repo_id, repo_type="model", revision=revision,
        allow_patterns=[name for name in HUB_FILES if (root / name).is_file()],
        commit_message=message or f"Upload MIRO model from {root.name}",
    )
    return str(getattr(commit, "commit_url", commit))


def _line(err: BaseException) -> str:
    """The first line of an exception's message (the Hub library's span several)."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
