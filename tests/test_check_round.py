"""examples/check_round.py, the quickstart's (and so CI's) check that a round improved the model."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _eval(path, iou, f1):
    path.write_text(json.dumps({"pixel": {"iou": iou}, "objects": {"f1": f1}}))
    return path


@pytest.mark.parametrize(("after", "code"), [(0.40, 0), (0.34, 1), (0.20, 1)])
def test_a_round_must_raise_iou_by_the_margin(tmp_path, after, code):
    before = _eval(tmp_path / "before.json", 0.30, 0.2)
    new = _eval(tmp_path / "after.json", after, 0.3)
    r = subprocess.run(
        [sys.executable, REPO / "examples" / "check_round.py", before, new, "--margin", "0.05"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == code, r.stderr
    assert "pixel IoU 0.300 -> " in r.stderr


def test_the_step_is_named_in_the_messages(tmp_path):
    before = _eval(tmp_path / "before.json", 0.30, 0.2)
    new = _eval(tmp_path / "after.json", 0.31, 0.3)
    r = subprocess.run(
        [sys.executable, REPO / "examples" / "check_round.py", before, new, "--what", "adapting"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert r.stderr.startswith("adapting: area B pixel IoU 0.300 -> 0.310")
    assert "after adapting the model is not 0.05 IoU better" in r.stderr
