"""Plain help through a pipe (issue 16): every command's --help at COLUMNS=80, read the way a
log or ``| less`` reads it, is whole and plain."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

COMMANDS = [
    "tile", "train", "pretrain", "predict", "rank", "adapt", "finetune", "evaluate", "info",
    "models", "simulate", "noise", "sample-data",
]  # fmt: skip
#: Python type names as typer's rich help shows them (<bool>, <int>, <list[Path]>, ...)
PYTHON_TYPES = re.compile(r"<(bool|int|float|str|path|file|list|tuple|dict)\b", re.I)


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm-256color"}
    env.pop("RSCRISIS_HELP", None)
    done = subprocess.run(
        [sys.executable, "-m", "rscrisis", *args, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_through_a_pipe_is_plain_and_whole(command):
    text = _help(*([command] if command else []))
    lines = text.splitlines()
    assert lines[0].startswith("Usage: rscrisis")
    assert "…" not in text, "a name or choice list was cut"
    assert not PYTHON_TYPES.search(text), PYTHON_TYPES.search(text).group(0)
    assert not re.search(r"[╭╰│─]", text), "box drawing"
    assert "{" not in lines[0], "typer's {argument} usage"
    too_long = [line for line in lines if len(line) > 80]
    assert not too_long, too_long
    trailing = [line for line in lines if line != line.rstrip()]
    assert not trailing, trailing


def test_every_option_name_is_shown_whole():
    import typer.main

    from rscrisis.cli.main import app

    group = typer.main.get_command(app)
    for name in COMMANDS:
        text = _help(name)
        for param in group.commands[name].params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("--"):
                    assert re.search(rf"(^|[\s,/]){re.escape(opt)}(\s|$|,)", text, re.M), (
                        name,
                        opt,
                    )


def test_help_shows_choices_and_defaults_the_click_way():
    text = _help("train")
    assert "--device [auto|cpu|cuda]" in text
    assert "--epochs INTEGER" in text and "[default: 30]" in text
    assert "--augment / --no-augment" in text and "[default: --augment]" in text
    assert "Usage: rscrisis train [OPTIONS] TILESETS..." in text
