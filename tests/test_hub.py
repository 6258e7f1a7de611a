"""Models by Hugging Face Hub repo id, offline from a Hub-layout cache, in every loader; bad ids and
revisions in one line; ``miro-export push`` up to the Hub API call (the HfApi methods are replaced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_cache import add_snapshot, offline_hub
from tiny_models import export_tiny_model

from miro.cli import eval as eval_cli
from miro.cli import export as export_cli
from miro.cli import generate as generate_cli
from miro.hub import HUB_FILES, resolve_model_dir, split_hub_id
from miro.pipeline import MiroPipeline
from miro.pretrained import WEIGHTS, CheckpointError, file_hash, load_pretrained

MAIN = "a" * 40
V2 = "b" * 40
REPO = "someone/tiny-miro"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub_exports")
    return {"main": export_tiny_model(root / "main", None, seed=0),
            "v2": export_tiny_model(root / "v2", None, seed=5)}


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exports: dict[str, Path]) -> Path:
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    add_snapshot(cache, REPO, exports["main"], MAIN, ref="main")
    add_snapshot(cache, REPO, exports["v2"], V2, ref="v2")
    monkeypatch.chdir(tmp_path)  # so that "someone/tiny-miro" is not also a relative path
    return cache


def test_split_hub_id() -> None:
    assert split_hub_id("owner/name") == ("owner/name", None)
    assert split_hub_id("owner/name@refs/pr/1") == ("owner/name", "refs/pr/1")
    assert split_hub_id("owner/name", "v1") == ("owner/name", "v1")
    assert split_hub_id("/abs/path/export") is None and split_hub_id("runs/x/export") is None
    with pytest.raises(CheckpointError, match="differs"):
        split_hub_id("owner/name@v1", "v2")


def test_loads_by_repo_id_and_revision_from_the_offline_cache(cache: Path, exports: dict[str, Path]) -> None:
    snapshots = cache / "models--someone--tiny-miro" / "snapshots"
    assert resolve_model_dir(REPO) == snapshots / MAIN
    assert resolve_model_dir(REPO, revision="v2") == snapshots / V2
    assert resolve_model_dir(f"{REPO}@{V2}") == snapshots / V2  # a commit hash, without refs
    by_id = MiroPipeline.from_pretrained(REPO)
    by_rev = MiroPipeline.from_pretrained(REPO, revision="v2")
    by_path = MiroPipeline.from_pretrained(exports["main"])
    args = dict(rewards={"alignment": 3}, seed=4, output="tensor")
    assert torch.equal(by_id("a red circle", **args), by_path("a red circle", **args))
    assert not torch.equal(by_id("a red circle", **args), by_rev("a red circle", **args))
    assert by_rev.pretrained.path == snapshots / V2


@pytest.mark.parametrize(
    ("source", "revision", "message"),
    [
        ("someone/absent", None,
         "someone/absent: no such local model directory, and someone/absent is not in the local Hub cache"),
        (REPO, "nope", "tiny-miro@nope is not in the local Hub cache"),
        (f"{REPO}@nope", None, "tiny-miro@nope is not in the local Hub cache"),
        ("someone/bad..name", None, "not a model directory nor a valid Hub repo id"),
        ("runs/a/export", None, "no such model directory"),
        (f"{REPO}@v1", "v2", "differs from revision='v2'"),
    ],
)
def test_bad_ids_and_revisions_are_one_line(
    cache: Path, source: str, revision: str | None, message: str
) -> None:
    with pytest.raises(CheckpointError) as info:
        load_pretrained(source, revision=revision)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_revision_of_a_local_path_is_refused(exports: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="only for Hub repo ids"):
        load_pretrained(exports["main"], revision="v2")


def test_miro_generate_by_repo_id_in_a_fresh_offline_process(cache: Path, exports: dict[str, Path],
                                                             tmp_path: Path) -> None:
    """The environment alone (HF_HUB_OFFLINE, HF_HUB_CACHE) reaches the library in a new process."""
    out = tmp_path / "out"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "miro.cli.generate", "--checkpoint", f"{REPO}@v2", "--prompt", "a red circle",
         "--steps", "1", "--threads", "1", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    meta = json.loads((out / "00000.json").read_text())
    assert meta["checkpoint"] == f"{REPO}@v2"
    assert meta["checkpoint_sha256"] == file_hash(exports["v2"] / WEIGHTS)


def test_miro_generate_bad_id_is_one_line(cache: Path, tmp_path: Path, capsys) -> None:
    code = generate_cli.main(["--checkpoint", "someone/absent", "--prompt", "a red circle", "--out",
                              str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("miro-generate: error: someone/absent: no such local model directory")
    assert err.count("\n") == 1


def test_miro_eval_by_repo_id_writes_its_card_next_to_the_report(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    tiny = ["--benchmark", "shapes", "--per-category", "1", "--samples-per-prompt", "1",
            "--sweep-levels", "0,10", "--sweep-images", "2", "--best-of", "0", "--steps", "1",
            "--rewards", "alignment"]
    snapshot_card = cache / "models--someone--tiny-miro" / "snapshots" / MAIN / "README.md"
    before = snapshot_card.read_text()
    assert eval_cli.main(["--checkpoint", REPO, "--out", str(out), *tiny]) == 0
    section = (out / "model_card_evaluation.md").read_text()
    assert section.startswith("## Evaluation") and "all targets 10" in section
    assert snapshot_card.read_text() == before  # the Hub cache is left as the Hub served it


def test_grpo_module_loads_a_repo_id(cache: Path) -> None:
    from miro.rl.module import GRPOModule

    module = GRPOModule(f"{REPO}@v2", rewards={"colorfulness": 1.0}, steps=2, group_size=2,
                        rollout_batch_size=2, train_batch_size=2)
    assert module.pretrained.path == cache / "models--someone--tiny-miro" / "snapshots" / V2


class RecordingApi:
    """Stands in for HfApi: records each call the upload makes, up to the network."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def create_repo(self, repo_id: str, **kwargs) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://hub.invalid/{repo_id}"

    def create_branch(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs) -> str:
        self.calls.append(("upload_folder", kwargs))
        if self.fail is not None:
            raise self.fail
        return f"https://hub.invalid/{kwargs['repo_id']}/commit/{'c' * 40}"


def test_push_uploads_the_export_with_its_card(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    import huggingface_hub

    export = export_tiny_model(tmp_path / "run" / "export", None)
    (export / "notes.txt").write_text("not part of the model")
    (export / "README.md").unlink()  # an export from before cards: push writes one
    api = RecordingApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    code = export_cli.main(["push", str(export), "me/my-miro", "--revision", "v1", "--private",
                            "--message", "first"])
    assert code == 0, capsys.readouterr().err
    assert "https://hub.invalid/me/my-miro/commit/" in capsys.readouterr().out
    (name1, repo), (name2, branch), (name3, upload) = api.calls
    assert (name1, name2, name3) == ("create_repo", "create_branch", "upload_folder")
    assert repo == {"repo_id": "me/my-miro", "repo_type": "model", "private": True, "exist_ok": True}
    assert branch["branch"] == "v1"
    assert upload["folder_path"] == str(export) and upload["revision"] == "v1"
    assert sorted(upload["allow_patterns"]) == sorted(HUB_FILES) and upload["commit_message"] == "first"
    assert (export / "README.md").read_text().startswith("---\nlibrary_name: miro\n")


def test_push_failures_are_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    export = export_tiny_model(tmp_path / "export", None)
    response = httpx2.Response(401, request=httpx2.Request("POST", "https://hub.invalid/api/repos/create"))
    api = RecordingApi(fail=HfHubHTTPError("401 Client Error: Unauthorized\nmore detail", response=response))
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    cases = [
        (["push", str(export), "me/my-miro"], "me/my-miro: upload failed (401 Client Error: Unauthorized)"),
        (["push", str(export), "not an id"], "not an id: not a Hub repo id"),
        (["push", str(export), "me/x@v1"], "the branch goes in --revision"),
        (["push", str(tmp_path / "none"), "me/my-miro"], "not a MIRO model directory"),
    ]
    for argv, message in cases:
        assert export_cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # only the first case got as far as the API
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]


def test_miro_app_serves_a_repo_id(cache: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import miro.app
    from miro.cli import app as app_cli

    served = []
    monkeypatch.setattr(miro.app, "launch",
                        lambda model, host, port, block: served.append((model, host, port)))
    assert app_cli.main(["--checkpoint", REPO, "--revision", "v2", "--port", "0", "--precision", "fp32"]) == 0
    (model, host, port), = served
    assert model.pipe.pretrained.path == cache / "models--someone--tiny-miro" / "snapshots" / V2
    assert (model.checkpoint, model.name, host, port) == (f"{REPO}@v2", f"{REPO}@v2", "127.0.0.1", None)
    assert "someone/tiny-miro@v2 (4 rewards: alignment, sharpness" in capsys.readouterr().out
    assert app_cli.main(["--checkpoint", REPO, "--revision", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("miro-app: someone/tiny-miro: no such local model directory")
    assert err.count("\n") == 1
