"""`scripts/cpu_meter.py`: what the benchmark counts as CPU a bet."""

from __future__ import annotations

import sys
from collections import namedtuple
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from cpu_meter import CpuMeter, Sample, busy_seconds  # noqa: E402

Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


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


def test_busy_time_leaves_out_waiting_and_the_hypervisors_time() -> None:
    # Linux's fields, as psutil gives them: guest time is inside user already.
    times = Times(user=10.0, nice=2.0, system=3.0, idle=50.0, iowait=1.0, irq=0.5,
                  softirq=0.5, steal=4.0, guest=1.0, guest_nice=0.0)
    assert busy_seconds(times) == 16.0


def test_a_sample_reads_the_machine_as_psutil_gives_it() -> None:
    before = psutil.cpu_times()
    sample = CpuMeter().sample()
    after = psutil.cpu_times()
    assert busy_seconds(before) <= sample.machine_busy <= busy_seconds(after)
    assert getattr(before, "steal", 0.0) <= sample.stolen <= getattr(after, "steal", 0.0)
