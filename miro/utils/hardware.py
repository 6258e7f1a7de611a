"""What this machine computes natively, and the precision and thread count every entry point derives from it.

Two measured facts make these choices matter (docs/machines.md):

* **bf16 on a CPU without native bf16 is emulated.** On an AVX2-only CPU a training step of the demo model
  took 10.5 s in bf16 autocast against 0.92 s in fp32; on a CPU with AVX512-BF16 or AMX bf16 is the faster
  one. ``precision=auto`` therefore means bf16 only where the device has it in hardware: CUDA GPUs that
  report bf16 support, x86 CPUs with AVX512-BF16 or AMX (as long as torch and oneDNN are allowed to use
  them: ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` can cap both, which is also how an AVX2 machine is
  emulated on a bigger one), and ARM CPUs with the BF16 extension. Everything else gets fp32.
* **Two torch threads on a busy 2-core box stall** in OpenMP barriers (one fp32 generation: 35 s with 2
  threads, 0.54 s with 1). ``threads=auto`` looks at how busy the machine is when the command starts and
  leaves out the cores other processes are using (bench/results/threads.md has the options measured), and
  keeps doing so while it runs (:class:`ThreadGovernor`): a job that arrives later lowers the count.

Explicit choices (``precision=bf16``, ``threads=2``, ``OMP_NUM_THREADS``) always win; the choice and the
reason are printed and stored with the run (:func:`compute_record`).
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch

log = logging.getLogger(__name__)
PRECISION_CHOICES = ("auto", "fp32", "bf16")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) that still include native bf16 instructions.
_ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                     "AVX10_2_512_AMX_2", "DEFAULT", "ALL"}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as the choices see it: its model name, torch's kernel level and the flags that matter."""

    model: str
    capability: str  # torch's dispatch level: "AVX2", "AVX512", "DEFAULT", "SVE256", ...
    flags: frozenset[str]
    machine: str  # platform.machine(): x86_64, aarch64, arm64

    @property
    def kind(self) -> str:
        """One word for benchmarks and READMEs: AMX, AVX512-BF16, AVX512, AVX2, ARM-BF16, ... ."""
        if self.machine.lower() in ("aarch64", "arm64"):
            return "ARM-BF16" if "bf16" in self.flags else "ARM"
        if self.capability.upper().startswith("AVX512"):
            if "amx_bf16" in self.flags:
                return "AMX"
            return "AVX512-BF16" if "avx512_bf16" in self.flags else "AVX512"
        return self.capability.upper() or "unknown"


def _cpu_flags_and_model() -> tuple[frozenset[str], str]:
    """Flags and model name from /proc/cpuinfo (Linux); empty elsewhere (macOS: no bf16 CPU path here)."""
    flags: set[str] = set()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features") and not flags:
                flags = set(value.split())
            elif key == "model name" and not model:
                model = value.strip()
    except OSError:
        pass
    return frozenset(flags), model or platform.processor() or "unknown"


def cpu_info() -> CpuInfo:
    """This process's view of the CPU (``ATEN_CPU_CAPABILITY`` lowers torch's capability; it is honoured)."""
    flags, model = _cpu_flags_and_model()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - an older or unusual build: treat as no vector extension known
        capability = "DEFAULT"
    return CpuInfo(model=model, capability=capability, flags=flags, machine=platform.machine())


def cpu_native_bf16(cpu: CpuInfo, env: dict[str, str] | None = None) -> bool:
    """Whether torch's CPU kernels run bf16 in hardware here (not emulated through fp32)."""
    env = os.environ if env is None else env
    if cpu.kind == "ARM-BF16":
        return True
    if cpu.kind not in ("AMX", "AVX512-BF16"):
        return False
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return not cap or cap in _ONEDNN_BF16_ISAS


def device_native_bf16(device: str | torch.device, cpu: CpuInfo | None = None) -> bool:
    """bf16 in hardware on ``device``: CUDA's own check, the CPU's flags, fp32 for anything else (MPS)."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # torch < 2.3 has no including_emulation
            return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_native_bf16(cpu or cpu_info())
    return False


@dataclass(frozen=True)
class PrecisionChoice:
    name: str  # "bf16" or "fp32": what actually runs
    requested: str
    reason: str

    @property
    def lightning(self) -> str:
        """The Lightning Trainer's spelling."""
        return "bf16-mixed" if self.name == "bf16" else "32-true"


def resolve_precision(
    requested: str, device: str | torch.device = "cpu", cpu: CpuInfo | None = None
) -> PrecisionChoice:
    """``auto`` -> bf16 where ``device`` has it natively, else fp32; an explicit choice is kept as it is.

    Lightning's spellings (``bf16-mixed``, ``32-true``, ``32``) are accepted too, so one function serves
    the trainer configs and the sampling commands.
    """
    spelled = {"bf16-mixed": "bf16", "bf16": "bf16", "32-true": "fp32", "32": "fp32", "fp32": "fp32"}
    value = str(requested).strip().lower()
    if value in spelled:
        return PrecisionChoice(spelled[value], str(requested), "asked for")
    if value != "auto":
        raise ValueError(
            f"precision must be one of auto, fp32, bf16 (or bf16-mixed, 32-true), got {requested!r}"
        )
    device = torch.device(device)
    if device.type == "cpu":
        cpu = cpu or cpu_info()
        if cpu_native_bf16(cpu):
            return PrecisionChoice("bf16", "auto", f"{cpu.kind} CPU computes bf16 natively")
        return PrecisionChoice(
            "fp32", "auto", f"{cpu.kind} CPU has no native bf16 (it would be emulated, ~10x slower)"
        )
    if device_native_bf16(device):
        return PrecisionChoice("bf16", "auto", f"{device.type} device computes bf16 natively")
    return PrecisionChoice("fp32", "auto", f"{device.type} device has no native bf16")


def busy_cores(window_s: float = 0.25) -> float:
    """Cores other processes keep busy right now: /proc/stat's non-idle time over ``window_s`` seconds,
    less this process's own (:func:`others_busy`), else the 1-minute load average."""
    first = cpu_sample()
    if first is None:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    time.sleep(window_s)
    second = cpu_sample()
    if second is None:
        return 0.0
    return others_busy(first, second, os.cpu_count() or 1, _ticks_per_second())


@dataclass(frozen=True)
class ThreadsChoice:
    threads: int
    requested: str
    reason: str


def parse_threads(value: int | str | None) -> int | str:
    """A ``threads`` setting as given on a command line or in a config: ``"auto"`` (also None / "null",
    a config's unset value) or a positive integer. The one parser every entry point uses; anything else
    is a ValueError with the one message they all print."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("auto", "null")):
        return "auto"
    if isinstance(value, bool):
        raise ValueError(f"threads must be a positive integer or auto, got {value!r}")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be a positive integer or auto, got {value!r}") from None
    if n < 1 or (isinstance(value, float) and value != n):
        raise ValueError(f"threads must be a positive integer or auto, got {value!r}")
    return n


def choose_threads(
    requested: int | str | None, cores: int, busy: float, omp_env: str | None
) -> ThreadsChoice:
    """The thread count for ``requested`` (an int, or None / "auto"), pure so it can be tested.

    auto: ``OMP_NUM_THREADS`` when the user set it; otherwise one thread per core that nobody else is
    using (``busy`` cores in use, rounded to the nearest core), at least one. On a 2-core box with another
    job running this is 1, which stays fast where 2 would stall in OpenMP barriers.
    """
    parsed = parse_threads(requested)
    if parsed != "auto":
        return ThreadsChoice(parsed, str(requested), "asked for")
    if omp_env and omp_env.strip().isdigit() and int(omp_env) > 0:
        return ThreadsChoice(int(omp_env), "auto", "OMP_NUM_THREADS")
    free = cores - int(busy + 0.5)
    n = max(1, min(cores, free))
    if n < cores:
        reason = f"{busy:.1f} of {cores} cores busy with other processes at start-up"
    else:
        reason = f"{cores} idle cores at start-up"
    return ThreadsChoice(n, "auto", reason)


def resolve_threads(requested: int | str | None = None) -> ThreadsChoice:
    """:func:`choose_threads` on this machine, measured now."""
    cores = os.cpu_count() or 1
    auto = requested in (None, "auto", "null")
    busy = busy_cores() if auto and not os.environ.get("OMP_NUM_THREADS") else 0.0
    return choose_threads(requested, cores, busy, os.environ.get("OMP_NUM_THREADS"))


def apply_threads(requested: int | str | None = None) -> ThreadsChoice:
    """Resolve and pin torch's intra-op threads; returns the choice so the caller can print and record it.

    An ``auto`` choice made by measuring the load (not one asked for, not OMP_NUM_THREADS) is also kept
    fitting while the command runs: :func:`keep_threads_fitting` is then polled by the long loops."""
    global _governor
    choice = resolve_threads(requested)
    torch.set_num_threads(choice.threads)
    measured = choice.requested == "auto" and choice.reason != "OMP_NUM_THREADS"
    _governor = ThreadGovernor(os.cpu_count() or 1, choice.threads) if measured else None
    return choice


@dataclass(frozen=True)
class CpuSample:
    """One reading of the machine's CPU counters: all cores' total and non-idle time (/proc/stat, in
    clock ticks) and this process's own CPU time (seconds, every thread), so that what *other* processes
    use between two readings is their difference."""

    total_ticks: int
    busy_ticks: int
    own_seconds: float


def cpu_sample() -> CpuSample | None:
    """Now's :class:`CpuSample`; None where /proc/stat cannot be read (not Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return CpuSample(sum(values), sum(values) - idle, time.process_time())


def others_busy(first: CpuSample, second: CpuSample, cores: int, ticks_per_second: float) -> float:
    """Cores other processes kept busy between two samples: the machine's busy time minus this process's
    own, over the elapsed time of all cores."""
    total = second.total_ticks - first.total_ticks
    if total <= 0:
        return 0.0
    own_ticks = (second.own_seconds - first.own_seconds) * ticks_per_second
    others = (second.busy_ticks - first.busy_ticks) - own_ticks
    return max(0.0, cores * others / total)


class ThreadChange(NamedTuple):
    """One change of an ``auto`` thread count while a job ran (recorded with the run's compute record)."""

    threads: int
    others_busy_cores: float
    after_s: float  # seconds since the job's threads were chosen


class ThreadGovernor:
    """Keeps an ``auto`` thread count fitting the cores other processes leave free, while a job runs.

    The start-up check alone is not enough on a shared box: a training run that started on an idle 2-core
    machine with 2 threads and was joined a minute later by another job ran at 2.7 s a step instead of
    about 0.15 s (the second thread waits in OpenMP barriers for a core it does not get). Polled from the
    job's own loop (a training step, a generation call), at most every ``interval_s`` seconds, it
    re-measures what other processes used since the last poll and sets torch's threads to the cores they
    leave free (the start-up rule, :func:`choose_threads`), down when a job arrives and back up when it
    leaves. It must run on the thread that computes: OpenMP's thread count is per calling thread.
    """

    def __init__(
        self, cores: int, threads: int, interval_s: float = 5.0,
        sample=cpu_sample, clock=time.monotonic, set_threads=torch.set_num_threads,
    ) -> None:
        self.cores, self.threads, self.interval_s = cores, threads, interval_s
        self._sample, self._clock, self._set = sample, clock, set_threads
        self._last, self._last_time = sample(), clock()
        self._start = self._last_time
        self.changes: list[ThreadChange] = []

    def poll(self) -> int | None:
        """The new thread count when it changed, else None (also when the interval has not passed)."""
        now = self._clock()
        if now - self._last_time < self.interval_s:
            return None
        current = self._sample()
        if current is None or self._last is None:
            return None
        busy = others_busy(self._last, current, self.cores, _ticks_per_second())
        self._last, self._last_time = current, now
        wanted = choose_threads("auto", self.cores, busy, None).threads
        if wanted == self.threads:
            return None
        self._set(wanted)
        self.threads = wanted
        self.changes.append(ThreadChange(wanted, round(busy, 2), round(now - self._start, 1)))
        return wanted


_governor: ThreadGovernor | None = None


def keep_threads_fitting() -> int | None:
    """Poll the running command's :class:`ThreadGovernor` (if its threads are ``auto``); returns the new
    thread count when it changed. Cheap enough to call every step: it reads /proc/stat every few seconds."""
    if _governor is None:
        return None
    changed = _governor.poll()
    if changed is not None:
        busy = _governor.changes[-1].others_busy_cores
        log.info(
            "threads %d (auto: %.1f of %d cores busy with other processes now)",
            changed, busy, _governor.cores,
        )
    return changed


def thread_changes() -> list[dict[str, float]]:
    """The running command's thread-count changes so far (none when its threads were asked for), as
    JSON-ready records: a run's compute record keeps the start-up choice *and* what followed."""
    return [] if _governor is None else [change._asdict() for change in _governor.changes]


def _ticks_per_second() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


def compute_record(precision: PrecisionChoice | None, threads: ThreadsChoice | None) -> dict:
    """What a run stores about how it computed: CPU model and kind, precision and threads with reasons,
    the load when it started (a shared box measures slower)."""
    cpu = cpu_info()
    record: dict = {
        "cpu": cpu.model,
        "cpu_kind": cpu.kind,
        "cpu_capability": cpu.capability,
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
    if precision is not None:
        record["precision"] = asdict(precision)
    if threads is not None:
        record["threads"] = asdict(threads)
    return record


def describe(precision: PrecisionChoice | None, threads: ThreadsChoice | None) -> str:
    """One console line: ``precision fp32 (auto: AVX2 CPU has no native bf16 ...), threads 1 (...)``."""
    parts = []
    if precision is not None:
        how = "asked for" if precision.reason == "asked for" else f"auto: {precision.reason}"
        parts.append(f"precision {precision.name} ({how})")
    if threads is not None:
        how = "asked for" if threads.reason == "asked for" else f"auto: {threads.reason}"
        parts.append(f"threads {threads.threads} ({how})")
    return ", ".join(parts)
