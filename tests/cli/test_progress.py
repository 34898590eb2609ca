"""Progress in a log (issue 16): where no bar can draw, long jobs write timestamped lines."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from rscrisis.cli.console import LogProgress

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d) (\w[\w ]*): (\d+)/(\d+) \((\d+) %\)")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_progress_writes_a_line_per_interval_with_rate_and_eta():
    stream, clock = io.StringIO(), FakeClock()
    progress = LogProgress("simulating", seconds=10, stream=stream)
    progress.clock = clock
    progress.t0 = 0.0
    total = 600
    for done in range(1, total + 1):  # one unit every 0.5 s: 300 s in all
        clock.now = done * 0.5
        progress(done, total, f"round {done}")
    lines = stream.getvalue().splitlines()
    assert all(LINE.match(line) for line in lines), lines[:3]
    # the first call, one line per 10 s over 300 s (each decile falls on one of them), the end
    assert 30 <= len(lines) <= 32
    assert "ETA" in lines[len(lines) // 2] and "2/s" in lines[len(lines) // 2]
    assert lines[-1].split(": ")[1].startswith("600/600 (100 %)") and "ETA" not in lines[-1]


def test_a_resumed_run_counts_only_its_own_work_in_the_rate():
    stream, clock = io.StringIO(), FakeClock()
    progress = LogProgress("simulating", seconds=0, stream=stream)
    progress.clock = clock
    progress(50, 100)  # resumed: half was done by an earlier run
    clock.now = 10.0
    progress(60, 100)
    last = stream.getvalue().splitlines()[-1]
    assert "1 /s" not in last and "1/s" in last and "ETA 0m40s" in last


@pytest.mark.slow
def test_train_writes_timestamped_progress_to_a_log_file(tiny_tiles, tmp_path):
    log = tmp_path / "train.log"
    env = {**os.environ, "RSCRISIS_PROGRESS_SECONDS": "0.5"}
    with open(log, "w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "rscrisis", "train", str(tiny_tiles), "-o",
             str(tmp_path / "m.safetensors"), "--epochs", "3", "--batch-size", "4",
             "--val-fraction", "0.25", "--block-tiles", "1", "--threads", "1"],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env, timeout=600,
        )  # fmt: skip
    assert done.returncode == 0, log.read_text()
    lines = log.read_text().splitlines()
    progress = [m for m in map(LINE.match, lines) if m]
    assert len(progress) >= 3, lines
    assert {m.group(2) for m in progress} == {"training"}
    assert progress[-1].group(3) == progress[-1].group(4)  # it reached the end
    # the timestamps are the wall clock and never go back; how often lines come is the
    # interval's job, checked on a fake clock above (a loaded CI machine stretches any real gap)
    import datetime

    times = [datetime.datetime.fromisoformat(m.group(1)) for m in progress]
    assert times == sorted(times)
    counts = [int(m.group(3)) for m in progress]
    assert counts == sorted(counts)  # work done only grows
    assert "╸" not in log.read_text() and "━" not in log.read_text()  # no bar drawn
