"""Data to stdout, talk to stderr (issue 16): results are data, so they go to stdout and -q
keeps them; reading a model header needs no torch; a closed pipe ends quietly."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_info_prints_the_header_on_stdout_and_quiet_keeps_it(invoke, tiny_model):
    r = invoke("info", tiny_model, "-q")
    assert r.exit_code == 0, r.stderr
    assert "encoder: resnet18" in r.stdout and "tile_size: 64" in r.stdout
    assert "\ntraining:\n  tilesets: " in r.stdout  # nested fields indented, not raw dicts
    assert r.stderr == ""


def test_models_prints_its_table_on_stdout(invoke):
    r = invoke("models", "-q")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["encoder", "parameters", "encoder", "only", "note"]
    assert any(line.startswith("resnet18 (default)") for line in lines)
    assert r.stderr == ""


@pytest.mark.parametrize("quiet", [[], ["-q"]])
def test_evaluate_prints_its_table_on_stdout(invoke, tiny_model, tiny_tiles, quiet):
    r = invoke("evaluate", tiny_model, tiny_tiles, "--threads", "1", *quiet)
    assert r.exit_code == 0, r.stderr
    assert "pixel IoU" in r.stdout and "pred. IoU Spearman" in r.stdout
    assert "pixel IoU" not in r.stderr
    if quiet:
        assert r.stderr == ""


def test_info_reads_the_header_without_torch(tiny_model):
    code = (
        "import sys\n"
        "from rscrisis.cli.main import app\n"
        f"app(['info', {str(tiny_model)!r}, '--json'], standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '"encoder": "resnet18"' in done.stdout


def test_a_closed_pipe_ends_quietly(tiny_model):
    # the reader is gone before rscrisis writes (it takes longer to start than `true` to
    # exit), so the write fails with EPIPE: that is the reader's choice, not an error
    script = f"set -o pipefail; {sys.executable} -m rscrisis info {tiny_model} | true"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
