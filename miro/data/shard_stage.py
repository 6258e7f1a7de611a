"""The machinery every shard stage shares (scoring, latent caching): one input shard in, one output shard
of the same name out, with a per-shard report.

* :func:`map_shard` streams one shard through a stage's ``prepare``/``process`` functions into a
  temporary shard renamed into place, its report written just before the rename.
* :func:`run_shards` gives each rank its share of the shards (shard i to rank i mod world) and skips
  the shards an earlier run finished (:func:`is_finished`: output and report exist, made from the
  input as it is now), so a killed run started again ends with the bytes of an uninterrupted one.
* Reports (:class:`StageReport`) list every skipped sample with its key and reason, the settings the
  shard was made with (a finished shard made otherwise is redone) and, for an input that ends early,
  why it is truncated (no output; the summary's :meth:`RunSummary.raise_if_truncated` ends the stage).

Stages add their own report fields and summary counters by subclassing :class:`StageReport` and
:class:`RunSummary`; their request errors subclass :class:`StageConfigError`.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

from miro.data.shards import (
    ShardInputError,
    TruncatedShardError,
    atomic_shard_writer,
    expand_shards,
    file_fingerprint,
    iter_shard,
    write_bytes_atomic,
)

log = logging.getLogger(__name__)


class StageConfigError(ValueError):
    """A shard-stage request that cannot work (clashing shard names, output over input, bad rank or
    missing options); the message says what to change."""


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
    # What was asked that changes the output (rewards and versions, image limits, ...): a finished shard
    # made with other settings is redone.
    settings: dict[str, Any] = field(default_factory=dict)
    truncated: str = ""  # why the input archive ended early; such a shard has no output and is redone

    def skip(self, key: str, reason: str) -> None:
        self.n_skipped += 1
        self.skipped.append({"key": key, "reason": reason})
        log.warning("%s: skipping sample %s: %s", self.input, key, reason)


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
    a damaged archive stops the stage with its name. An archive that ends early
    (:class:`TruncatedShardError`) gets its report, with ``truncated`` saying where, but no output:
    it is never finished, so a later run redoes it.
    """
    report.input_fingerprint = file_fingerprint(input_path)

    def dropped(key: str, reason: str) -> None:  # duplicate keys, unsafe member names
        report.n_samples += 1
        report.skip(key, reason)

    try:
        _map_into(input_path, output_path, report_path, report, prepare, process, batch_size, on_samples,
                  dropped)
    except TruncatedShardError as err:
        report.truncated = str(err)
        log.error("%s (reported in %s; no output written, a rerun redoes it)", err, report_path)
        write_bytes_atomic(report_path, report.to_bytes())
        # An output from an earlier, complete version of this input no longer matches it: whoever reads
        # the output directory (training, fit-bins) must not take it for this input's.
        Path(output_path).unlink(missing_ok=True)


def _map_into(
    input_path: str | Path,
    output_path: str | Path,
    report_path: str | Path,
    report: StageReport,
    prepare: Callable[[dict[str, Any]], T | str],
    process: Callable[[list[T]], Sequence[dict[str, Any] | str]],
    batch_size: int,
    on_samples: Callable[[int], None] | None,
    on_problem: Callable[[str, str], None],
) -> None:
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
            for sample in iter_shard(input_path, on_problem):
                report.n_samples += 1
                consumed += 1
                item = prepare(sample)
                if isinstance(item, str):
                    report.skip(sample["__key__"], item)
                    continue
                pending.append((sample["__key__"], item))
                if len(pending) >= batch_size:
                    flush()
        except TruncatedShardError:
            raise
        except tarfile.TarError as err:  # a damaged archive, not a damaged sample: stop and say which
            raise ShardInputError(f"cannot read shard {input_path}: {err}") from None
        flush()
        write_bytes_atomic(report_path, report.to_bytes())


@dataclass
class RunSummary:
    """One stage run over many shards: this run's shard reports and the shards an earlier run finished."""

    output_dir: str
    report_dir: str
    reports: list[Any]  # the stage's StageReport subclass
    n_resumed: int = 0  # shards already finished by an earlier run

    def total(self, counter: str) -> int:
        """A counter summed over the shards written (a truncated shard's work was discarded)."""
        return sum(getattr(r, counter) for r in self.reports if not getattr(r, "truncated", ""))

    @property
    def n_skipped(self) -> int:
        return self.total("n_skipped")

    @property
    def truncated(self) -> list[Any]:
        """The reports of shards whose archive ended early (no output written)."""
        return [r for r in self.reports if getattr(r, "truncated", "")]

    def raise_if_truncated(self) -> None:
        """End a stage that finished every other shard with one line naming the truncated ones."""
        bad = self.truncated
        if bad:
            names = ", ".join(r.input for r in bad[:5])
            names += f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise TruncatedShardError(
                f"{len(bad)} input shard(s) are truncated and were not processed: {names} (reasons in "
                f"{self.report_dir}); re-download or rewrite them and run again"
            )


def dist_rank_world(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when not distributed."""
    env = os.environ if env is None else env
    rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise StageConfigError(f"invalid RANK={rank} / WORLD_SIZE={world}")
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
            raise StageConfigError(f"two input shards named {name}: {by_name[name]} and {path}")
        by_name[name] = path
        out = output_dir / name
        if out.resolve() == Path(path).resolve():
            raise StageConfigError(f"output {out} would overwrite input {path}; choose another output dir")
        plan.append((path, out))
    return plan


def report_path_for(report_dir: str | Path, output: Path) -> Path:
    return Path(report_dir) / f"{output.name.removesuffix('.tar')}.json"


def is_finished(
    input_path: str | Path, output: Path, report: Path, settings: Mapping[str, Any] | None = None
) -> bool:
    """The output and its report exist, the report was made from the input as it is now (a shard
    re-rendered or re-downloaded since, other size or time stamp, is processed again), with the
    ``settings`` asked now (when given), and the input was complete."""
    if not (output.is_file() and report.is_file()):
        return False
    try:
        saved = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or saved.get("input_fingerprint") != file_fingerprint(input_path):
        return False
    if saved.get("truncated"):
        return False
    if settings is not None and saved.get("settings") != _plain(settings):
        log.info(
            "%s: finished with other settings (%s), redoing it with %s",
            output, json.dumps(saved.get("settings"), sort_keys=True),
            json.dumps(_plain(settings), sort_keys=True),
        )
        return False
    return True


def _plain(settings: Mapping[str, Any]) -> Any:
    """Settings as a report stores them (a JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(settings, sort_keys=True))


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
    settings: Mapping[str, Any] | None = None,
) -> tuple[list[R], int, Path]:
    """The loop every shard stage shares: this rank's share of ``inputs`` (shard i goes to rank
    i mod world), each either finished by an earlier run (its report is loaded: resume) or given to
    ``process(input, output, report_path)``. A finished shard made with ``settings`` other than these
    (the options that change a stage's output, recorded in each report) is processed again. Returns
    the reports, how many were resumed, and the report directory (default ``<output_dir>/reports``)."""
    planned_all = plan_outputs(expand_shards(inputs), output_dir)
    plan = planned_all[rank::world_size]
    reports_in = Path(report_dir) if report_dir is not None else Path(output_dir) / "reports"
    reports: list[R] = []
    resumed = 0
    for i, (path, out) in enumerate(plan):
        report_path = report_path_for(reports_in, out)
        if on_shard is not None:
            on_shard(i, len(plan), out.name)
        if skip_finished and is_finished(path, out, report_path, settings):
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
