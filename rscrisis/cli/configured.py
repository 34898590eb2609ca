"""Command options generated from the pydantic configs, and ``--config FILE``.

One source of truth for options: a command names the config it runs, and every field of that
config becomes one option. Its name (``batch_size`` -> ``--batch-size``), type, default, help
and, for a ``Literal``, its choices are read from the field; nothing about an option is written
a second time in the command. Where a spelling predates the generator (``--top/-k``,
``--freeze-norm/--train-norm``, comma-separated lists), the command declares a :class:`Spell`.
A field a command does not offer is named in ``hide``; tests/cli/test_option_parity.py holds
the reason for each.

Values are layered, lowest first:

1. the config's default;
2. ``--config FILE``: the resolved config a previous run wrote, read from its manifest's
   ``"config"`` object (``MODEL.train.json``, ``predict.json``, ``batch.json``...) or from
   a bare config object;
3. options typed on the command line. Click's parameter source tells a typed value from a
   default, so a default never overrides the file.

The command receives an :class:`Options` and calls :meth:`Options.resolve`, which builds the
config and turns a validation failure into one actionable line naming the option or the file.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, overload

import typer

from rscrisis.config import _Config, first_problem
from rscrisis.errors import InputError

C = TypeVar("C", bound=_Config)

#: the common flags every command ends with; generated options are inserted before them
_TRAILING = ("overwrite", "resume", "json_output", "verbose", "quiet")


@dataclass(frozen=True)
class Spell:
    """How one field is spelled on the command line, where it differs from the generated rule
    (``--field-name``; ``--flag/--no-flag`` for booleans; one repeatable option per tuple)."""

    decls: tuple[str, ...] = ()  # option names, e.g. ("--top", "-k")
    help: str | None = None  # replaces the field's description
    more: str = ""  # appended to the description
    lead: str = ""  # put before it
    comma: bool = False  # a tuple given as one comma-separated value
    metavar: str | None = None


@dataclass(frozen=True)
class Nested:
    """Fields of the sub-config held in field ``at`` of the command's config, offered under
    their own names (``simulate --steps`` sets ``finetune.steps``)."""

    at: str
    fields: tuple[str, ...]


@dataclass
class _Option:
    name: str
    annotation: Any
    default: Any
    convert: Callable[[Any], Any]
    targets: list[tuple[type[_Config], tuple[str, ...]]]
    raw: Any = None  # the config's default (``default`` is how the option shows it)


def _strip_none(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


_ENUMS: dict[tuple[Any, ...], type[enum.Enum]] = {}


def _choices(literal: Any) -> type[enum.Enum]:
    """A str Enum of a ``Literal``'s values, so typer shows and checks the choices (one class
    per Literal: typer compares defaults by identity of the class)."""
    values = get_args(literal)
    if values not in _ENUMS:
        name = "Choice_" + "_".join(str(v).replace("-", "_") for v in values)
        _ENUMS[values] = enum.Enum(name, {str(v): v for v in values}, type=str)  # type: ignore[assignment]
    return _ENUMS[values]


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _comma_parser(item: Any, optional: bool, option: str) -> Callable[[Any], Any]:
    def parse(text: str | None) -> tuple[Any, ...] | None:
        if text is None or not text.strip():
            return None if optional else ()
        parts = [v.strip() for v in text.split(",") if v.strip()]
        if item is int:
            try:
                return tuple(int(v) for v in parts)
            except ValueError:
                raise typer.BadParameter(
                    f"expected comma-separated integers, got {text!r}", param_hint=option
                ) from None
        return tuple(parts)

    return parse


def _build(name: str, info: Any, default: Any, spell: Spell, panel: str | None) -> _Option:
    tp, optional = _strip_none(info.annotation)
    dash = "--" + name.replace("_", "-")
    body = (info.description or "") if spell.help is None else spell.help
    text = spell.lead + body + spell.more
    kw: dict[str, Any] = {"help": text, "rich_help_panel": panel}
    if spell.metavar:
        kw["metavar"] = spell.metavar
    decls = spell.decls
    convert: Callable[[Any], Any] = _plain
    if tp is bool:
        annotation: Any = bool
        decls = decls or (f"{dash}/--no-{dash[2:]}",)
    elif get_origin(tp) is Literal:
        annotation = _choices(tp) | None if optional else _choices(tp)
    elif get_origin(tp) is tuple and Ellipsis not in get_args(tp):  # a fixed pair: nargs=2
        annotation = tp
    elif get_origin(tp) is tuple:
        item = get_args(tp)[0]
        if spell.comma:
            annotation = str | None
            convert = _comma_parser(item, optional, (decls or (dash,))[0])
            default = None if default is None else ",".join(str(v) for v in default)
        else:
            one = _choices(item) if get_origin(item) is Literal else str
            annotation = list[one] | None  # type: ignore[valid-type]
            default = None

            def convert(values: Any) -> Any:
                return tuple(_plain(v) for v in values or ())
    elif tp in (int, float, str):
        annotation = tp | None if optional else tp
    else:  # pragma: no cover - a config field type the generator does not know yet
        raise TypeError(f"no command-line form for {name}: {info.annotation!r}")
    option = typer.Option(*decls, **kw)
    return _Option(name, Annotated[annotation, option], default, convert, [])


def _own_fields_first(config: type[_Config]) -> list[str]:
    """The fields of ``config`` in help order: its own first (as declared), then those it
    shares with other configs through its bases (``FittingConfig``, ``ComputeConfig``)."""
    order: list[str] = []
    for klass in config.__mro__:
        for name in vars(klass).get("__annotations__", {}):
            if name in config.model_fields and name not in order:
                order.append(name)
    return order


def _sub_config(config: type[_Config], at: str) -> tuple[type[_Config], Any]:
    info = config.model_fields[at]
    sub, _ = _strip_none(info.annotation)
    return sub, info.get_default(call_default_factory=True)


def _options(
    roots: tuple[type[_Config], ...],
    nested: Iterable[Nested],
    hide: set[str],
    spell: dict[str, Spell],
    panels: dict[type[_Config], str],
) -> dict[str, _Option]:
    found: dict[str, _Option] = {}

    def add(name, info, default, root, path, panel):
        if name not in found:
            found[name] = _build(name, info, default, spell.get(name, Spell()), panel)
            found[name].raw = default
        elif found[name].raw != default:
            # one option, two configs with their own defaults (predict --tta: on for tile
            # sets, off for scenes): the option shows none, each config keeps its own unless
            # the option is given, and both descriptions must say so
            if "default" not in (info.description or ""):  # pragma: no cover - at import
                raise TypeError(f"--{name} has another default in {root.__name__}")
            found[name].default = None
            get_args(found[name].annotation)[1].show_default = False
        found[name].targets.append((root, path))

    owners: dict[str, int] = {}
    for root in roots:
        for name in root.model_fields:
            owners[name] = owners.get(name, 0) + 1
    for root in roots:
        for name in _own_fields_first(root):
            info = root.model_fields[name]
            if name in hide:
                continue
            panel = panels.get(root) if owners[name] == 1 else None
            add(name, info, info.get_default(call_default_factory=True), root, (name,), panel)
    for branch in nested:
        sub, parent_default = _sub_config(roots[0], branch.at)
        for name in branch.fields:
            info = sub.model_fields[name]
            default = (
                getattr(parent_default, name)
                if parent_default is not None
                else info.get_default(call_default_factory=True)
            )
            add(name, info, default, roots[0], (branch.at, name), None)
    return found


class Options:
    """What the user gave a command: options typed on the command line, over a ``--config``
    file; :meth:`resolve` turns them into a validated config."""

    def __init__(
        self,
        command: str,
        config: type[_Config],
        given: dict[str, Any],
        options: dict[str, _Option],
        file: Path | None,
    ):
        self.command = command
        self.config = config
        self.given = given
        self._options = options
        self.file = file

    def _file_values(self) -> dict[str, Any]:
        if self.file is None:
            return {}
        from rscrisis.io.inputs import read_json

        hint = "pass a manifest an rscrisis run wrote (e.g. MODEL.train.json, batch.json)"
        data = read_json(self.file, hint=hint)
        values = data["config"] if isinstance(data.get("config"), dict) else data
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}

    @overload
    def resolve(self) -> Any: ...  # the command's config (pretrain: PretrainConfig)

    @overload
    def resolve(self, config: type[C]) -> C: ...

    def resolve(self, config: type[_Config] | None = None) -> Any:
        """The config of type ``config`` (default: the command's): defaults, then the
        ``--config`` file, then the options given on the command line."""
        from pydantic import ValidationError

        config = config or self.config
        data = self._file_values()
        for name, value in self.given.items():
            for root, path in self._options[name].targets:
                if root is config:
                    _put(data, path, value, config)
        try:
            return config(**data)
        except ValidationError as exc:
            raise self._problem(exc, config) from None

    def _problem(self, exc: Any, config: type[_Config]) -> InputError:
        error = exc.errors()[0]
        loc = tuple(str(p) for p in error["loc"])
        place, message = first_problem(exc, "options")
        for name in self.given:
            for root, path in self._options[name].targets:
                if root is config and loc[: len(path)] == path:
                    return InputError(f"invalid --{name.replace('_', '-')}: {message}")
        if self.file is None or not loc:
            return InputError(f"invalid {place}: {message}")
        if error["type"] == "extra_forbidden":
            return InputError(
                f"holds the config of another command: {place!r} is not an option of "
                f"rscrisis {self.command} ({config.__name__})",
                path=self.file,
                hint=f"pass the manifest an rscrisis {self.command} run wrote",
            )
        return InputError(
            f"config field {place}: {message}",
            path=self.file,
            hint=f"fix the file, or override it with --{loc[-1].replace('_', '-')}",
        )


def _put(data: dict[str, Any], path: tuple[str, ...], value: Any, config: type[_Config]) -> None:
    """Set ``data[path]``; a missing sub-config starts from its field's default, so one nested
    option does not reset the others (``simulate --steps`` keeps ``val_fraction`` 0)."""
    head, *rest = path
    if not rest:
        data[head] = value
        return
    if not isinstance(data.get(head), dict):
        _, default = _sub_config(config, head)
        data[head] = {} if default is None else default.model_dump()
    sub, _ = _sub_config(config, head)
    _put(data[head], tuple(rest), value, sub)


def _given(ctx: Any, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Repeat a run: read its resolved options from the manifest it wrote "
        "(e.g. MODEL.train.json, predict.json, batch.json, simulate.json) or from a "
        "config JSON object; options given here override the file's.",
        dir_okay=False,
    ),
]


def configured(
    config: type[_Config],
    *more: type[_Config],
    nested: Iterable[Nested] = (),
    hide: Iterable[str] = (),
    spell: dict[str, Spell] | None = None,
    panels: dict[type[_Config], str] | None = None,
    doc: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of ``config`` (and of ``more``, for a command that
    runs one of several configs, as predict does for tile sets or a scene) plus ``--config``.

    The decorated function takes ``ctx`` and an ``options: Options`` parameter instead of the
    fields; its own parameters (inputs, ``--out``, flags that are not settings) keep their
    place, and the generated options come before the common trailing flags.
    """
    roots = (config, *more)
    hidden = set(hide)
    table = _options(roots, tuple(nested), hidden, dict(spell or {}), dict(panels or {}))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "options"]
        clash = set(table) & {p.name for p in own}
        if clash:  # pragma: no cover - a programming error caught at import
            raise TypeError(f"{fn.__name__}: parameters {clash} are also config fields")
        made = [
            inspect.Parameter(
                o.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=o.default,
                annotation=o.annotation,
            )
            for o in table.values()
        ]
        made.append(
            inspect.Parameter(
                "config_file",
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=None,
                annotation=ConfigFile,
            )
        )
        cut = next((i for i, p in enumerate(own) if p.name in _TRAILING), len(own))
        params = [*own[:cut], *made, *own[cut:]]

        def command(**values: Any) -> Any:
            ctx = values["ctx"]
            given = {
                name: option.convert(values[name])
                for name, option in table.items()
                if _given(ctx, name)
            }
            for name in table:
                values.pop(name)
            file = values.pop("config_file")
            name = ctx.info_name or fn.__name__
            values["options"] = Options(name, config, given, table, file)
            return fn(**values)

        command.__name__ = fn.__name__
        command.__qualname__ = fn.__qualname__
        command.__module__ = fn.__module__
        command.__doc__ = doc if doc is not None else fn.__doc__
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.hidden_fields = frozenset(hidden)  # type: ignore[attr-defined]
        return command

    return decorate
