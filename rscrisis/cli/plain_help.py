"""Plain ``--help`` for logs, pipes and scripts, the way rio and GDAL print theirs.

On a terminal typer draws its rich panels. Anywhere else (``rscrisis train --help | less``, a
field script's log, a README generated from the help) the help is plain text: every option
name whole, click's metavars (``INTEGER``, ``FLOAT``, ``TEXT``, ``PATH``, ``[a|b|c]``) instead
of Python types, defaults in brackets, wrapped to the terminal width (``COLUMNS``, at most 80)
with no trailing spaces. Rich stays confined to terminals.
"""

from __future__ import annotations

import enum
import os
import shutil
import sys
from typing import Any

#: the widest plain help, as click's default
MAX_WIDTH = 80


def wants_plain(stream: Any = None) -> bool:
    """Plain help unless stdout is a terminal (``RSCRISIS_HELP=plain|rich`` forces one)."""
    forced = os.environ.get("RSCRISIS_HELP", "").lower()
    if forced in ("plain", "rich"):
        return forced == "plain"
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def width() -> int:
    columns = shutil.get_terminal_size((MAX_WIDTH, 24)).columns
    return max(40, min(columns, MAX_WIDTH))


_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "Path": "PATH", "bool": "BOOLEAN"}


def _type_metavar(param: Any) -> str:
    """click's metavar for a typer parameter: ``INTEGER``, ``FLOAT``, ``TEXT``, ``PATH``, a
    choice as ``[a|b|c]``, a pair as ``FLOAT FLOAT``."""
    from typing import get_args

    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
    if desc.is_tuple:
        return " ".join(
            _NAMES.get(a.__name__, a.__name__.upper()) for a in get_args(desc.annotation)
        )
    bare = param.bare_type()
    if bare.startswith("list[") and bare.endswith("]"):
        bare = bare[5:-1]
    return _NAMES.get(bare, bare.upper())


def argument_metavar(param: Any) -> str:
    name = (param.metavar or param.name).upper()
    name = f"{name}..." if param.nargs != 1 else name
    return name if param.required else f"[{name}]"


def option_names(param: Any) -> str:
    """``-o, --out DIR``; a flag pair as ``--augment / --no-augment``."""
    names = ", ".join(sorted(param.opts, key=lambda o: (o.startswith("--"), o)))
    if param.secondary_opts:
        names += " / " + ", ".join(param.secondary_opts)
    if not (param.is_flag or param.count):
        names += " " + (param.metavar or _type_metavar(param))
    return names


def _default_text(param: Any) -> str | None:
    default = param.default
    if param.show_default is False:  # a default the help text states (predict --tta)
        return None
    if param.is_flag:
        if param.secondary_opts:
            return (param.opts if default else param.secondary_opts)[0]
        return None
    if param.count or default is None or callable(default):
        return None
    if isinstance(default, enum.Enum):
        return str(default.value)
    if isinstance(default, (list, tuple)):
        return " ".join(str(getattr(v, "value", v)) for v in default) or None
    return str(default)


def option_help(param: Any) -> str:
    text = (param.help or "").strip()
    extra = []
    default = _default_text(param)
    if default is not None and not param.required:
        extra.append(f"default: {default}")
    if param.required:
        extra.append("required")
    if extra:
        text = f"{text}  [{'; '.join(extra)}]" if text else f"[{'; '.join(extra)}]"
    return text


class _Text:
    """Plain help text: paragraphs and two-column definition lists, wrapped at word
    boundaries only (never inside an option name or a hyphenated word), no trailing spaces."""

    def __init__(self) -> None:
        self.width = width()
        self.lines: list[str] = []

    def wrap(self, text: str, indent: str, rest: str | None = None) -> list[str]:
        import textwrap

        room = self.width - len(indent)
        # a comma list longer than the line (simulate's default formulas) may break after
        # its commas; no other word is ever broken
        words = [w.replace(",", ", ") if len(w) > room else w for w in text.split()]
        return textwrap.wrap(
            " ".join(" ".join(words).split()),
            width=self.width,
            initial_indent=indent,
            subsequent_indent=indent if rest is None else rest,
            break_on_hyphens=False,
            break_long_words=False,
        ) or [indent.rstrip()]

    def usage(self, prog: str, args: str) -> None:
        self.lines += self.wrap(f"{prog} {args}", "Usage: ", " " * (len(prog) + 8))

    def paragraphs(self, text: str) -> None:
        for block in text.split("\n\n"):
            self.lines.append("")
            self.lines += self.wrap(block, "  ")

    def section(self, title: str, rows: list[tuple[str, str]], column: int = 30) -> None:
        self.lines += ["", f"{title}:"]
        first = min(column, max(len(name) for name, _ in rows) + 2)
        pad = " " * (2 + first)
        for name, text in rows:
            head = f"  {name}"
            if len(name) + 2 <= first:
                body = self.wrap(text, " " * (2 + first)) if text else [""]
                self.lines.append((head.ljust(2 + first) + body[0].lstrip()).rstrip())
                self.lines += body[1:]
            else:  # a long name: the text starts on the next line
                self.lines.append(head)
                if text:
                    self.lines += self.wrap(text, pad)

    def value(self) -> str:
        return "\n".join(line.rstrip() for line in self.lines) + "\n"


def _help_text(command: Any) -> str:
    import inspect

    return inspect.cleandoc(command.help or "")


def command_help(command: Any, ctx: Any) -> str:
    """The plain help of one command."""
    out = _Text()
    params = command.get_params(ctx)
    arguments = [p for p in params if p.param_type_name == "argument"]
    pieces = [command.options_metavar or "[OPTIONS]", *(argument_metavar(p) for p in arguments)]
    out.usage(ctx.command_path, " ".join(pieces))
    text = _help_text(command)
    if text:
        out.paragraphs(text)
    if arguments:
        rows = [(argument_metavar(p).strip("[]"), (p.help or "").strip()) for p in arguments]
        out.section("Arguments", rows)
    options = [p for p in params if p.param_type_name == "option" and not p.hidden]
    if options:
        out.section("Options", [(option_names(p), option_help(p)) for p in options])
    return out.value()


def group_help(group: Any, ctx: Any) -> str:
    """The plain help of the command group: its options and one line per command."""
    out = _Text()
    out.usage(ctx.command_path, "[OPTIONS] COMMAND [ARGS]...")
    text = _help_text(group)
    if text:
        out.paragraphs(text)
    options = [p for p in group.get_params(ctx) if p.param_type_name == "option" and not p.hidden]
    out.section("Options", [(option_names(p), option_help(p)) for p in options])
    rows = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            rows.append((name, command.short_help or command.get_short_help_str(limit=200)))
    out.section("Commands", rows, column=14)
    return out.value()


def render(command: Any, ctx: Any) -> str:
    """The plain help of a command, or of the group (which lists commands)."""
    if hasattr(command, "list_commands"):
        return group_help(command, ctx)
    return command_help(command, ctx)
