"""`scripts/cpu_meter.py`: what the benchmark counts as CPU a bet."""

from __future__ import annotations

import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cpu_meter import CpuMeter, Sample  # noqa: E402


def test_time_the_hypervisor_took_is_not_busy_and_is_shown_apart() -> None:
    before = Sample(at=0.0, cpu={1: ("ServeReplica", 10.0), 2: ("postgres", 4.0)},
                    machine_busy=20.0, stolen=3.0)
    after = Sample(at=2.0, cpu={1: ("ServeReplica", 11.2), 2: ("postgres", 4.4),
                                3: ("loadgen", 0.2)},
                   machine_busy=22.0, stolen=3.6)
    usage = CpuMeter.usage(before, after)
    assert round(usage.ours, 6) == 1.8
    assert round(usage.others, 6) == 0.2
    assert usage.cores() == {"ServeReplica": 0.6, "postgres": 0.2, "loadgen": 0.1,
                             "machine_busy": 1.0, "others_on_machine": 0.1, "stolen": 0.3}


def test_a_sample_reads_busy_time_without_steal() -> None:
    machine = psutil.cpu_times()
    steal = getattr(machine, "steal", 0.0)
    sample = CpuMeter().sample()
    assert sample.stolen >= steal
    # Busy never includes idle or stolen time: it stays below what the machine has had.
    assert sample.machine_busy <= sum(machine) - machine.idle - steal + 1.0
