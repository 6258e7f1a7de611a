"""The scoring stage: annotate shards with raw reward scores (``KEY.rewards.json``).

One input shard becomes one output shard with the same file name, its samples in the same order
(every original file byte for byte, minus samples that cannot be scored, see below) and one more file
per sample::

    KEY.rewards.json = {"scores": {name: raw score or null}, "versions": {name: reward version}}

Guarantees the rest of the pipeline builds on:

* **Restartable.** Output shards and their reports appear atomically (temporary name, rename) and a
  shard is finished when both exist, so a run killed at any moment and started again skips finished
  shards, redoes the one in flight and ends with exactly the bytes of an uninterrupted run.
* **Bad samples are reported, not fatal.** A sample whose image does not decode, or without a caption,
  is left out of the output and listed (key, reason) in the shard's report, ``REPORTS/NAME.json``.
* **Merging.** A sample that already has ``rewards.json`` keeps its scores; only rewards it lacks, or
  scored with another version of the reward, are computed (a separate VQAScore pass adds ``vqa`` to
  shards scored before). ``recompute=True`` scores everything again.
* **Sharding across processes.** Under torchrun, rank ``i`` of ``W`` takes shards ``i, i + W, ...``.

Rewards are named: scores are stored under the name a reward has in the Hydra group ``conf/rewards``
(or its registered name when built from a name, see :func:`reward_specs`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from miro.data.shards import (
    IMAGE_EXTS,
    ShardInputError,
    atomic_shard_writer,
    expand_shards,
    file_fingerprint,
    iter_shard,
    split_key,
    write_bytes_atomic,
)
from miro.rewards.base import RewardModel, build_reward, resolve_name

log = logging.getLogger(__name__)

REWARDS_EXT = "rewards.json"


class ScoringConfigError(ValueError):
    """A scoring or fitting request that cannot work (no rewards, clashing shard names, bad reward
    config); the message says what to change."""


# --------------------------------------------------------------------------------------------------
# The annotation format


def encode_rewards(scores: Mapping[str, float | None], versions: Mapping[str, str]) -> bytes:
    """``rewards.json`` bytes: sorted keys, no whitespace, non-finite scores as null (= missing)."""
    clean = {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in scores.items()}
    data = {"scores": dict(sorted(clean.items())), "versions": dict(sorted(versions.items()))}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_rewards(data: bytes, key: str = "?") -> tuple[dict[str, float | None], dict[str, str]]:
    """Scores and versions from ``rewards.json`` bytes; ValueError naming the sample if malformed."""
    try:
        obj = json.loads(data)
        scores = {str(k): (None if v is None else float(v)) for k, v in obj["scores"].items()}
        versions = {str(k): str(v) for k, v in obj.get("versions", {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"sample {key}: malformed {REWARDS_EXT} ({err!r})") from None
    return scores, versions


# --------------------------------------------------------------------------------------------------
# Choosing and building rewards


def reward_specs(rewards: str | Sequence[str] | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The rewards to build: {name: config with ``_target_`` (or ``name`` of a registered reward)}.

    Takes what the Hydra group ``conf/rewards`` composes (a mapping name -> config), or registered
    reward names and aliases (stored under the canonical name, so ``sharp`` and ``sharpness`` agree);
    a ``null`` config also means "the registered reward of that name".
    """
    if isinstance(rewards, (DictConfig, ListConfig)):
        rewards = OmegaConf.to_container(rewards, resolve=True)  # type: ignore[assignment]
    if isinstance(rewards, str):
        rewards = [rewards]
    specs: dict[str, dict[str, Any]] = {}
    if isinstance(rewards, Mapping):
        if "_target_" in rewards:
            raise ScoringConfigError(
                "a reward config is not nested under its name: a file conf/rewards/NAME.yaml must read "
                "'NAME:' then its indented '_target_: ...' and settings"
            )
        for name, config in rewards.items():
            if config is None:
                canonical = resolve_name(str(name))
                specs[canonical] = {"name": canonical}
            elif isinstance(config, Mapping) and ("_target_" in config or "name" in config):
                specs[str(name)] = dict(config)
            else:
                raise ScoringConfigError(f"reward {name!r}: config needs a _target_, got {config!r}")
    else:
        for name in rewards:
            canonical = resolve_name(str(name))
            specs[canonical] = {"name": canonical}
    if not specs:
        raise ScoringConfigError("no rewards selected; pass e.g. rewards=[alignment,sharpness]")
    return specs


def build_rewards(specs: Mapping[str, Mapping[str, Any]], device: str = "cpu") -> dict[str, RewardModel]:
    """Instantiate every spec on ``device`` (unless the spec sets its own ``device``)."""
    built: dict[str, RewardModel] = {}
    for name, spec in specs.items():
        kwargs = {} if "device" in spec else {"device": device}
        try:
            built[name] = build_reward(dict(spec), **kwargs)
        except (TypeError, ValueError) as err:  # unknown or invalid settings
            raise ScoringConfigError(f"reward {name!r}: bad config {dict(spec)} ({err})") from None
    return built


# --------------------------------------------------------------------------------------------------
# Scoring one shard


class JsonReport:
    """A dataclass saved as deterministic JSON (no timings), so a rerun of a stage writes identical
    reports; shared by the data stages' per-shard reports."""

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(kw_only=True)
class StageReport(JsonReport):
    """What a shard stage (scoring, caching) did to one shard; saved as ``REPORTS/NAME.json``.

    Every skipped sample is listed with its key and reason, so a user can find it in the input."""

    shard: str  # file name, the same for input and output
    input: str
    input_fingerprint: str = ""  # the input's size:mtime_ns when it was read (resume redoes changed inputs)
    n_samples: int = 0
    n_skipped: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)  # [{"key", "reason"}]

    def skip(self, key: str, reason: str) -> None:
        self.n_skipped += 1
        self.skipped.append({"key": key, "reason": reason})
        log.warning("%s: skipping sample %s: %s", self.input, key, reason)


@dataclass(kw_only=True)
class ShardReport(StageReport):
    """A scored shard: which rewards (and versions) scored it, and how many scores were computed now
    rather than kept from the input."""

    n_scored: int = 0
    rewards: dict[str, str] = field(default_factory=dict)  # name -> version
    computed: dict[str, int] = field(default_factory=dict)  # name -> scores computed now
    reused: dict[str, int] = field(default_factory=dict)  # name -> scores kept from the input


@dataclass
class _Item:
    sample: dict[str, Any]
    image: torch.Tensor  # uint8 [3, H, W]
    caption: str
    scores: dict[str, float | None]
    versions: dict[str, str]


def _prepare(sample: dict[str, Any]) -> _Item | str:
    """A decoded sample, or the reason it cannot be scored."""
    key = sample["__key__"]
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        return f"no image ({'/'.join(IMAGE_EXTS)})"
    try:
        with Image.open(io.BytesIO(sample[ext])) as img:
            arr = np.asarray(img.convert("RGB"))
    except Exception as err:  # PIL raises many types for corrupt files
        return f"cannot decode {ext}: {type(err).__name__}: {err}"
    if "txt" not in sample:
        return "no caption (txt)"
    try:
        caption = sample["txt"].decode("utf-8")
    except UnicodeDecodeError:
        return "caption (txt) is not UTF-8"
    if not caption.strip():
        return "empty caption (txt)"
    scores: dict[str, float | None] = {}
    versions: dict[str, str] = {}
    if REWARDS_EXT in sample:
        try:
            scores, versions = decode_rewards(sample[REWARDS_EXT], key)
        except ValueError as err:
            return str(err).removeprefix(f"sample {key}: ")
    image = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    return _Item(sample, image, caption, scores, versions)


def _score_pending(
    items: list[_Item], rewards: Mapping[str, RewardModel], recompute: bool, report: ShardReport
) -> None:
    """Fill in each item's missing (or stale) scores, one reward and one image size at a time."""
    for name, reward in rewards.items():
        todo = [
            i for i, it in enumerate(items)
            if recompute or name not in it.scores or it.versions.get(name) != reward.version
        ]
        report.computed[name] = report.computed.get(name, 0) + len(todo)
        report.reused[name] = report.reused.get(name, 0) + len(items) - len(todo)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i in todo:
            by_size.setdefault(tuple(items[i].image.shape), []).append(i)
        for index in by_size.values():
            batch = torch.stack([items[i].image for i in index])
            values = reward.score(batch, [items[i].caption for i in index]).tolist()
            for i, value in zip(index, values, strict=True):
                items[i].scores[name] = value if math.isfinite(value) else None
                items[i].versions[name] = reward.version


def score_shard(
    input_path: str | Path,
    output_path: str | Path,
    report_path: str | Path,
    rewards: Mapping[str, RewardModel],
    batch_size: int = 256,
    recompute: bool = False,
    on_samples: Callable[[int], None] | None = None,
) -> ShardReport:
    """Score one shard into ``output_path`` and write its report; returns the report."""
    if batch_size < 1:
        raise ScoringConfigError(f"batch_size must be >= 1, got {batch_size}")
    report = ShardReport(
        shard=Path(output_path).name,
        input=str(input_path),
        rewards={name: r.version for name, r in rewards.items()},
    )

    def score(items: list[_Item]) -> list[dict[str, Any]]:
        _score_pending(items, rewards, recompute, report)
        report.n_scored += len(items)
        return [{**it.sample, REWARDS_EXT: encode_rewards(it.scores, it.versions)} for it in items]

    map_shard(input_path, output_path, report_path, report, _prepare, score, batch_size, on_samples)
    log.info("%s: scored %d, skipped %d -> %s", input_path, report.n_scored, report.n_skipped, output_path)
    return report


T = TypeVar("T")


def map_shard(
    input_path: str | Path,
    output_path: str | Path,
    report_path: str | Path,
    report: StageReport,
    prepare: Callable[[dict[str, Any]], T | str],
    process: Callable[[list[T]], Sequence[dict[str, Any] | str]],
    batch_size: int,
    on_samples: Callable[[int], None] | None = None,
) -> None:
    """Stream one shard through a stage, the loop scoring and caching share.

    ``prepare`` decodes a sample (or says why it cannot be used); ``process`` handles a batch of
    prepared items and returns, per item, the output sample or the reason it is skipped. Outputs go to
    a temporary shard renamed into place; the report is written just before that rename, so a shard
    that exists always has its report (what resuming checks). A damaged sample is skipped and listed;
    a damaged archive stops the stage with its name.
    """
    report.input_fingerprint = file_fingerprint(input_path)
    with atomic_shard_writer(output_path) as writer:
        pending: list[tuple[str, T]] = []
        consumed = 0

        def flush() -> None:
            nonlocal consumed
            if pending:
                outputs = process([item for _, item in pending])
                for (key, _), out in zip(pending, outputs, strict=True):
                    if isinstance(out, str):
                        report.skip(key, out)
                    else:
                        writer.write(out)
                pending.clear()
            if on_samples is not None:
                on_samples(consumed)
            consumed = 0

        try:
            for sample in iter_shard(input_path):
                report.n_samples += 1
                consumed += 1
                item = prepare(sample)
                if isinstance(item, str):
                    report.skip(sample["__key__"], item)
                    continue
                pending.append((sample["__key__"], item))
                if len(pending) >= batch_size:
                    flush()
        except tarfile.TarError as err:  # a damaged archive, not a damaged sample: stop and say which
            raise ShardInputError(f"cannot read shard {input_path}: {err}") from None
        flush()
        write_bytes_atomic(report_path, report.to_bytes())


# --------------------------------------------------------------------------------------------------
# Scoring many shards


@dataclass
class RunSummary:
    """One stage run over many shards: this run's shard reports and the shards an earlier run finished."""

    output_dir: str
    report_dir: str
    reports: list[Any]  # the stage's StageReport subclass
    n_resumed: int = 0  # shards already finished by an earlier run

    def total(self, counter: str) -> int:
        return sum(getattr(r, counter) for r in self.reports)

    @property
    def n_skipped(self) -> int:
        return self.total("n_skipped")

    @property
    def n_scored(self) -> int:
        return self.total("n_scored")


def dist_rank_world(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not distributed."""
    env = os.environ if env is None else env
    rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ScoringConfigError(f"invalid RANK={rank} / WORLD_SIZE={world}")
    return rank, world


def device_for_rank(device: str, env: Mapping[str, str] | None = None) -> str:
    """``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun, so each process gets its own GPU."""
    env = os.environ if env is None else env
    if device == "cuda" and "LOCAL_RANK" in env:
        return f"cuda:{int(env['LOCAL_RANK'])}"
    return device


def plan_outputs(inputs: Sequence[str], output_dir: str | Path) -> list[tuple[str, Path]]:
    """(input, output path) per shard; refuses clashing names and writing over an input."""
    output_dir = Path(output_dir)
    by_name: dict[str, str] = {}
    plan = []
    for path in inputs:
        name = Path(path).name
        if name in by_name:
            raise ScoringConfigError(f"two input shards named {name}: {by_name[name]} and {path}")
        by_name[name] = path
        out = output_dir / name
        if out.resolve() == Path(path).resolve():
            raise ScoringConfigError(f"output {out} would overwrite input {path}; choose another output dir")
        plan.append((path, out))
    return plan


def report_path_for(report_dir: str | Path, output: Path) -> Path:
    return Path(report_dir) / f"{output.name.removesuffix('.tar')}.json"


def is_finished(input_path: str | Path, output: Path, report: Path) -> bool:
    """The output and its report exist, and the report was made from the input as it is now: a shard
    re-rendered or re-downloaded since (other size or time stamp) is processed again."""
    if not (output.is_file() and report.is_file()):
        return False
    try:
        made_from = json.loads(report.read_text(encoding="utf-8")).get("input_fingerprint")
    except (OSError, ValueError):
        return False
    return made_from == file_fingerprint(input_path)


def score_shards(
    inputs: str | Sequence[str],
    output_dir: str | Path,
    rewards: Mapping[str, RewardModel],
    batch_size: int = 256,
    report_dir: str | Path | None = None,
    recompute: bool = False,
    rank: int = 0,
    world_size: int = 1,
    on_samples: Callable[[int], None] | None = None,
    on_shard: Callable[[int, int, str], None] | None = None,
) -> RunSummary:
    """Score this rank's share of ``inputs`` into ``output_dir``, skipping finished shards.

    ``on_samples(n)`` is called as samples are processed and ``on_shard(i, total, name)`` before each
    shard (for progress bars).
    """
    if not rewards:
        raise ScoringConfigError("no rewards selected; pass e.g. rewards=[alignment,sharpness]")
    reports, resumed, reports_in = run_shards(
        inputs, output_dir, report_dir, rank, world_size,
        lambda path, out, report: score_shard(
            path, out, report, rewards, batch_size, recompute, on_samples=on_samples
        ),
        ShardReport.load, skip_finished=True, done="scored", on_shard=on_shard,
    )  # fmt: skip
    return RunSummary(str(output_dir), str(reports_in), reports, resumed)


R = TypeVar("R")


def run_shards(
    inputs: str | Sequence[str],
    output_dir: str | Path,
    report_dir: str | Path | None,
    rank: int,
    world_size: int,
    process: Callable[[Path, Path, Path], R],
    load_report: Callable[[Path], R],
    skip_finished: bool = True,
    done: str = "done",
    on_shard: Callable[[int, int, str], None] | None = None,
) -> tuple[list[R], int, Path]:
    """The loop every shard stage shares: this rank's share of ``inputs`` (shard i goes to rank
    i mod world), each either finished by an earlier run (its report is loaded: resume) or given to
    ``process(input, output, report_path)``. Returns the reports, how many were resumed, and the report
    directory (default ``<output_dir>/reports``)."""
    planned_all = plan_outputs(expand_shards(inputs), output_dir)
    plan = planned_all[rank::world_size]
    reports_in = Path(report_dir) if report_dir is not None else Path(output_dir) / "reports"
    reports: list[R] = []
    resumed = 0
    for i, (path, out) in enumerate(plan):
        report_path = report_path_for(reports_in, out)
        if on_shard is not None:
            on_shard(i, len(plan), out.name)
        if skip_finished and is_finished(path, out, report_path):
            log.info("%s: already %s, skipping", out, done)
            reports.append(load_report(report_path))
            resumed += 1
        else:
            reports.append(process(path, out, report_path))
    if rank == 0:
        warn_unplanned_outputs(output_dir, reports_in, {out.name for _, out in planned_all})
    return reports, resumed, reports_in


def warn_unplanned_outputs(output_dir: str | Path, report_dir: Path, planned: set[str]) -> None:
    """Name the shards in ``output_dir`` that this stage wrote (they have a report) from inputs that are
    no longer given, e.g. after regenerating fewer shards. They are left in place (scoring in parts
    into one directory is legitimate), but whoever reads the directory would read them too."""
    stale = sorted(
        p.name for p in Path(output_dir).glob("*.tar")
        if p.name not in planned and report_path_for(report_dir, p).is_file()
    )
    if stale:
        shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        log.warning(
            "%s also holds %d shard(s) made from inputs not given this time (%s); delete them if they are "
            "left over from an earlier run, or training and fit-bins will read them too",
            output_dir, len(stale), shown,
        )


# --------------------------------------------------------------------------------------------------
# Reading scores back (for fitting bins)


@dataclass
class ScoreTable:
    """Raw scores of many records: one float64 array per reward, NaN where a record lacks it."""

    scores: dict[str, np.ndarray]
    versions: dict[str, set[str]]  # every version seen per reward
    shards: list[str]  # shards read
    n_records: int


def iter_reward_annotations(path: str | Path) -> Iterable[tuple[str, bytes]]:
    """(key, rewards.json bytes) of one shard, reading no image data."""
    try:
        tar = tarfile.open(path, "r")
    except (OSError, tarfile.TarError) as err:
        raise ShardInputError(f"cannot read shard {path}: {err}") from None
    with tar:
        for member in tar:
            if member.isfile():
                key, ext = split_key(member.name)
                if ext == REWARDS_EXT:
                    handle = tar.extractfile(member)
                    yield key, handle.read() if handle is not None else b""


def read_scores(inputs: str | Sequence[str], max_samples: int | None = None, seed: int = 0) -> ScoreTable:
    """Scores of every record, or of a seeded random sample of up to ``max_samples`` records.

    Sampling reads whole shards in a seeded random order until it has ``max_samples`` records, then
    draws ``max_samples`` of those uniformly, so fitting on 100k records of a 12M-record data set
    reads ~100k records' annotations, not all of them.
    """
    shards = expand_shards(inputs)
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        if max_samples < 1:
            raise ScoringConfigError(f"max_samples must be >= 1 (or null for all), got {max_samples}")
        shards = [shards[i] for i in rng.permutation(len(shards))]
    records: list[tuple[dict[str, float | None], dict[str, str]]] = []
    used: list[str] = []
    for path in shards:
        if max_samples is not None and len(records) >= max_samples:
            break
        used.append(path)
        records.extend(decode_rewards(data, key) for key, data in iter_reward_annotations(path))
    if not records:
        raise ShardInputError(f"no {REWARDS_EXT} in the {len(used)} shard(s) of {inputs!r}; score them first")
    if max_samples is not None and len(records) > max_samples:
        keep = np.sort(rng.choice(len(records), size=max_samples, replace=False))
        records = [records[i] for i in keep]
    names = sorted({name for scores, _ in records for name in scores})
    table = {name: np.full(len(records), np.nan) for name in names}
    versions: dict[str, set[str]] = {name: set() for name in names}
    for row, (scores, vers) in enumerate(records):
        for name, value in scores.items():
            table[name][row] = np.nan if value is None else value
            if name in vers:
                versions[name].add(vers[name])
    return ScoreTable(table, versions, sorted(used), len(records))
