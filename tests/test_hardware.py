"""precision=auto and threads=auto: the choice logic on mocked CPUs and loads, and what the runs record."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from miro.config import compose_config, resolve_compute
from miro.utils.hardware import (
    CpuInfo,
    busy_cores,
    choose_threads,
    cpu_native_bf16,
    resolve_precision,
)


def cpu(capability: str, *flags: str, machine: str = "x86_64") -> CpuInfo:
    return CpuInfo(model="test CPU", capability=capability, flags=frozenset(flags), machine=machine)


AVX2 = cpu("AVX2", "avx2", "fma")
AVX512 = cpu("AVX512", "avx2", "avx512f", "avx512bw")
AVX512_BF16 = cpu("AVX512", "avx2", "avx512f", "avx512_bf16")
AMX = cpu("AVX512", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@pytest.fixture(autouse=True)
def _no_isa_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake CPUs above decide alone: a caller's ONEDNN_MAX_CPU_ISA (set to emulate an AVX2 machine on
    a bigger one, docs/machines.md) would otherwise turn the fake AMX's native bf16 off. Tests of the cap
    set it themselves."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)


@pytest.mark.parametrize(("info", "kind", "native"), [
    (AVX2, "AVX2", False),
    (AVX512, "AVX512", False),
    (AVX512_BF16, "AVX512-BF16", True),
    (AMX, "AMX", True),
    # the bf16 flags alone do not count while torch is held to AVX2 (ATEN_CPU_CAPABILITY=avx2)
    (cpu("AVX2", "avx512_bf16", "amx_bf16"), "AVX2", False),
    (cpu("DEFAULT", "bf16", machine="aarch64"), "ARM-BF16", True),
    (cpu("DEFAULT", "asimd", machine="aarch64"), "ARM", False),
])
def test_cpu_kind_and_native_bf16(info: CpuInfo, kind: str, native: bool) -> None:
    assert info.kind == kind
    assert cpu_native_bf16(info, env={}) is native


def test_onednn_isa_cap_turns_native_bf16_off() -> None:
    assert cpu_native_bf16(AMX, env={"ONEDNN_MAX_CPU_ISA": "AVX2"}) is False
    assert cpu_native_bf16(AMX, env={"ONEDNN_MAX_CPU_ISA": "avx512_core"}) is False
    assert cpu_native_bf16(AMX, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) is True


def test_precision_auto_follows_the_cpu() -> None:
    slow = resolve_precision("auto", "cpu", cpu=AVX2)
    assert (slow.name, slow.lightning) == ("fp32", "32-true") and "no native bf16" in slow.reason
    fast = resolve_precision("auto", "cpu", cpu=AMX)
    assert (fast.name, fast.lightning) == ("bf16", "bf16-mixed") and "AMX" in fast.reason


def test_explicit_precision_wins_and_bad_names_are_refused() -> None:
    assert resolve_precision("bf16", "cpu", cpu=AVX2).name == "bf16"
    assert resolve_precision("bf16-mixed", "cpu", cpu=AVX2).lightning == "bf16-mixed"
    assert resolve_precision("32-true", "cpu", cpu=AMX).name == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", "cpu")


def test_precision_auto_on_cuda_asks_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", "cuda").name == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "cuda").name == "fp32"  # only emulated (e.g. a T4): not native


@pytest.mark.parametrize(("busy", "threads"), [(0.0, 2), (0.3, 2), (0.6, 1), (1.4, 1), (4.5, 1)])
def test_threads_auto_leaves_busy_cores_out(busy: float, threads: int) -> None:
    assert choose_threads("auto", cores=2, busy=busy, omp_env=None).threads == threads


def test_threads_auto_on_a_big_machine_and_explicit_choices() -> None:
    assert choose_threads(None, cores=16, busy=3.2, omp_env=None).threads == 13
    assert choose_threads("auto", cores=16, busy=0.0, omp_env="4").threads == 4  # the user's OMP setting
    assert choose_threads(3, cores=2, busy=2.0, omp_env="1").threads == 3  # explicit wins over everything
    for bad in (0, -1, "many"):
        with pytest.raises(ValueError, match="threads must be a positive integer or auto"):
            choose_threads(bad, cores=2, busy=0.0, omp_env=None)


def test_busy_cores_is_a_fraction_of_the_machine() -> None:
    busy = busy_cores(window_s=0.05)
    assert 0.0 <= busy <= (torch.get_num_threads() + 64)


def test_training_config_resolves_auto_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = torch.get_num_threads()
    try:
        for info, lightning in ((AVX2, "32-true"), (AMX, "bf16-mixed")):
            monkeypatch.setattr("miro.utils.hardware.cpu_info", lambda info=info: info)
            cfg = compose_config("train", ["+experiment=shapes", f"paths.output_dir={tmp_path}", "threads=1"])
            assert cfg.trainer.precision == "auto"
            record = resolve_compute(cfg)
            assert cfg.trainer.precision == lightning
            assert record["threads"]["threads"] == 1 and torch.get_num_threads() == 1
            assert record["cpu_kind"] == info.kind and json.dumps(record)
        # GRPO: the module's own autocast is resolved, the trainer's explicit 32-true is kept
        monkeypatch.setattr("miro.utils.hardware.cpu_info", lambda: AVX2)
        rl = compose_config("rl", [f"paths.output_dir={tmp_path}", "threads=1"])
        resolve_compute(rl)
        assert (rl.module.precision, rl.trainer.precision) == ("fp32", "32-true")
    finally:
        torch.set_num_threads(before)


def test_others_busy_subtracts_this_process() -> None:
    from miro.utils.hardware import CpuSample, others_busy

    # 2 cores, 1 s elapsed = 200 ticks at 100 Hz; 180 ticks busy, of which this process used 1.2 s.
    first, second = CpuSample(1000, 400, 5.0), CpuSample(1200, 580, 6.2)
    assert others_busy(first, second, cores=2, ticks_per_second=100) == pytest.approx(2 * (180 - 120) / 200)
    assert others_busy(first, CpuSample(1200, 500, 7.0), cores=2, ticks_per_second=100) == 0.0  # never < 0
    assert others_busy(first, first, cores=2, ticks_per_second=100) == 0.0


class _FakeMachine:
    """/proc/stat and a clock for the governor: ``others`` cores busy with other processes and ``own``
    cores' worth of this process's time per second that passes."""

    def __init__(self) -> None:
        self.t, self.total, self.busy, self.own_s = 0.0, 0, 0, 0.0
        self.others, self.own = 0.0, 2.0
        self.set_to: list[int] = []

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.total += int(2 * 100 * seconds)
        self.busy += int(100 * seconds * min(2.0, self.others + self.own))
        self.own_s += seconds * self.own

    def sample(self):
        from miro.utils.hardware import CpuSample

        return CpuSample(self.total, self.busy, self.own_s)


def test_thread_governor_follows_other_jobs_down_and_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from miro.utils.hardware import ThreadGovernor

    monkeypatch.setattr("miro.utils.hardware._ticks_per_second", lambda: 100.0)
    m = _FakeMachine()
    gov = ThreadGovernor(
        2, 2, interval_s=5.0, sample=m.sample, clock=lambda: m.t, set_threads=m.set_to.append
    )
    m.advance(6)
    assert gov.poll() is None and m.set_to == []  # alone on the box: keeps 2
    m.others, m.own = 1.0, 1.0  # another job arrives and takes a core
    m.advance(2)
    assert gov.poll() is None  # not yet: polled at most every interval_s
    m.advance(4)
    assert gov.poll() == 1 and m.set_to == [1] and gov.threads == 1
    m.advance(6)
    assert gov.poll() is None  # still busy: stays at 1
    m.others = 0.0  # the other job ends
    m.advance(6)
    assert gov.poll() == 2 and m.set_to == [1, 2]
    assert [(c.threads, c.others_busy_cores) for c in gov.changes] == [(1, 1.0), (2, 0.0)]
    assert [c.after_s for c in gov.changes] == [12.0, 24.0]  # seconds since the threads were chosen


def test_thread_changes_reach_the_runs_compute_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compute.json keeps the start-up choice and, at the end of the run, every change that followed."""
    from miro.lit.threads import KeepThreadsFitting
    from miro.utils import hardware
    from miro.utils.hardware import ThreadGovernor

    record = tmp_path / "compute.json"
    record.write_text(json.dumps({"threads": 2, "threads_reason": "auto"}))
    trainer = SimpleNamespace(is_global_zero=True)
    callback = KeepThreadsFitting(record)
    callback.on_train_end(trainer, None)  # no governor (threads asked for): the record is left alone
    assert json.loads(record.read_text()) == {"threads": 2, "threads_reason": "auto"}
    gov = ThreadGovernor(2, 2, sample=lambda: None, clock=lambda: 0.0, set_threads=lambda n: None)
    gov.changes.append(hardware.ThreadChange(1, 1.02, 35.0))
    monkeypatch.setattr(hardware, "_governor", gov)
    assert hardware.thread_changes() == [{"threads": 1, "others_busy_cores": 1.02, "after_s": 35.0}]
    callback.on_train_end(trainer, None)
    assert json.loads(record.read_text()) == {
        "threads": 2, "threads_reason": "auto",
        "thread_changes": [{"threads": 1, "others_busy_cores": 1.02, "after_s": 35.0}],
    }  # fmt: skip
    assert not list(tmp_path.glob("*.tmp"))


def test_only_measured_auto_threads_are_governed(monkeypatch: pytest.MonkeyPatch) -> None:
    from miro.utils import hardware

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(hardware, "busy_cores", lambda window_s=0.25: 0.0)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        hardware.apply_threads("auto")
        assert hardware._governor is not None
        hardware.apply_threads(1)  # asked for: never changed behind the user's back
        assert hardware._governor is None and hardware.keep_threads_fitting() is None
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        hardware.apply_threads("auto")
        assert hardware._governor is None
    finally:
        torch.set_num_threads(before)
        hardware._governor = None


def test_a_busy_child_process_counts_as_another_job() -> None:
    """The real counters: a process spinning on one core for a second shows as (at least half) a busy core."""
    import subprocess
    import sys

    from miro.utils.hardware import _ticks_per_second, cpu_sample, others_busy

    first = cpu_sample()
    if first is None:
        pytest.skip("no /proc/stat on this system")
    spin = "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    busy = others_busy(first, cpu_sample(), os.cpu_count() or 1, _ticks_per_second())
    assert busy >= 0.5
