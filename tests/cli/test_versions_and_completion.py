"""``rscrisis --show-versions`` for bug reports, and shell completion (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_show_versions_names_what_a_bug_report_needs(invoke):
    r = invoke("--show-versions")
    assert r.exit_code == 0, r.stderr
    fields = dict(line.split(None, 1) for line in r.stdout.splitlines() if "  " in line)
    for key in ("rscrisis", "python", "torch", "gdal", "proj", "geos", "rasterio", "numpy"):
        assert key in fields and fields[key].strip(), key
    assert "torch threads" in r.stdout and "cuda" in r.stdout
    import rasterio

    assert fields["gdal"].strip() == rasterio.__gdal_version__


#: a line each shell's completion script holds and the others do not
SCRIPT_MARKERS = {
    "bash": "complete -o default -F _rscrisis_completion rscrisis",
    "zsh": "#compdef rscrisis",
    "fish": "complete --command rscrisis",
}


def _run_cli(**env: str) -> str:
    """The console script's stdout, run in a process of its own with ``env`` added."""
    done = subprocess.run(
        [sys.executable, "-c", "from rscrisis.cli.main import run; run()"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _complete(words: str, cword: int) -> list[str]:
    return _run_cli(
        _RSCRISIS_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(cword)
    ).split()


def test_bash_completion_knows_commands_options_and_choices():
    assert "train" in _complete("rscrisis tra", 1)
    assert "--freeze-norm" in _complete("rscrisis finetune --freeze-n", 2)
    assert _complete("rscrisis train --device ", 3) == ["auto", "cpu", "cuda"]


def test_the_completion_script_is_printed_for_the_shell_named(invoke, monkeypatch):
    # typer guesses the shell from the parent processes, and then ignores a name after
    # --show-completion: under a parent that is no shell (cron, a detached job) it printed
    # "Shell  not supported". With the guess off, the option takes the shell's name, so the
    # test no longer depends on what started pytest.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    for shell in ("bash", "zsh"):
        r = invoke("--show-completion", shell)
        assert r.exit_code == 0, (r.output, r.exception)
        assert SCRIPT_MARKERS[shell] in r.stdout and f"complete_{shell}" in r.stdout, shell
        assert "_RSCRISIS_COMPLETE" in r.stdout


def test_a_named_shells_script_comes_from_the_environment_variable_the_readme_gives():
    # README: `_RSCRISIS_COMPLETE=source_zsh rscrisis`, whatever shell (if any) runs it
    for shell, marker in SCRIPT_MARKERS.items():
        script = _run_cli(_RSCRISIS_COMPLETE=f"source_{shell}")
        assert marker in script and f"complete_{shell}" in script, shell
