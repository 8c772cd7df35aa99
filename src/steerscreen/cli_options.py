"""Typer commands built from the config dataclasses: one field, one option.

:func:`command` registers a command whose options are a config class's fields (flag
``--field-name`` unless the field's metadata names another, help = the field's docstring,
default = the field's default, required when it has none) plus a few command-level parameters
(``--out``, ``--force`` ...). The body receives the config's keyword arguments and the rest, so
the CLI cannot drift from the config: a new field is a new option, documented once.
:class:`Commands` is every command's last line of defence (errors, failed writes, Ctrl-C).

Field metadata (set with ``steerscreen.config.stages.flag`` / ``hidden``): ``flag`` (the option
name), ``cli: False`` (not offered), ``parse``: ``floats`` (a comma list of numbers),
``list`` (a comma list of words), ``switch`` (a flag that is only ever turned on).
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from steerscreen.config import ClusterOptions, field_docs
from steerscreen.errors import SteerscreenError, from_os_error

INTERRUPTED = "interrupted: everything finished so far is saved; rerun the same command to resume"
RESUME = ("Continue the {stage} stage recorded in {folder} and fail if it records none (a "
          "mistyped path fails at once). Rerunning the same command resumes anyway; --resume "
          "never recomputes with another config and cannot go with --force.")


class Commands(typer.core.TyperGroup):
    """Every command's last line of defence, in one place: a SteerscreenError, a failed write
    or Ctrl-C gets its message and exit code instead of a traceback."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except SteerscreenError as e:
            _fail(e)
        except OSError as e:
            err = from_os_error(e)
            if err is None:
                raise
            _fail(err)
        except KeyboardInterrupt:
            console.print(f"[bold]{INTERRUPTED}[/]")
            raise typer.Exit(130) from None


console = Console(stderr=True)


def _fail(err: SteerscreenError) -> None:
    # Messages quote user input and specs ("hf:OWNER/REPO[/SUBFOLDER]"): never rich markup.
    console.print(f"[bold red]error:[/] {escape(err.what)}")
    if err.fix:
        console.print(f"[bold]fix:[/] {escape(err.fix)}")
    raise typer.Exit(err.exit_code)


def floats(text: str | None, flag: str) -> list[float] | None:
    """``"0.1,0.25"`` -> [0.1, 0.25] (None stays None), or an error naming the flag."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise SteerscreenError(f"{flag} {text!r} is not a comma-separated list of numbers",
                               f"pass e.g. {flag} 0.25 or {flag} 0.125,0.25,0.5") from None


def option(name: str, tp: Any, default: Any, help: str, *decls: str) -> inspect.Parameter:
    """One keyword parameter of a command: ``Annotated[tp, typer.Option(*decls, help=...)]``."""
    info = typer.Option(*decls, help=escape(help))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[
        tp, info], default=inspect.Parameter.empty if default is dataclasses.MISSING else default)


def argument(name: str, tp: Any, help: str) -> inspect.Parameter:
    """One positional argument of a command (``FEATURE...`` for a list type)."""
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             annotation=Annotated[tp, typer.Argument(help=escape(help))])


def _cli_type(tp: Any, parse: str | None) -> Any:
    if parse in ("floats", "list"):
        return str | None if parse == "floats" else str
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return str
    if origin in (typing.Union, types.UnionType):  # X | None: typer wants Optional[X]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] | None
    return tp


def config_options(cls: type, exclude: Iterable[str] = ()) -> list[inspect.Parameter]:
    """The options of every CLI field of ``cls`` (required ones first)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    params = []
    for f in dataclasses.fields(cls):
        if f.name in exclude or f.metadata.get("cli") is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
            else dataclasses.MISSING)
        flag = f.metadata.get("flag")
        params.append(option(f.name, _cli_type(hints[f.name], f.metadata.get("parse")),
                             default, docs.get(f.name, ""), *([flag] if flag else [])))
    # Required options first, where a shard runs (the Ray options) last.
    return sorted(params, key=lambda p: (p.default is not inspect.Parameter.empty,
                                         p.name in ClusterOptions.FIELDS))


def config_values(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """The config's keyword arguments out of a command's parameters (comma lists parsed)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in given:
            continue
        value = given[f.name]
        if f.metadata.get("parse") == "floats":
            value = floats(value, f.metadata.get("flag", f"--{f.name.replace('_', '-')}"))
        out[f.name] = value
    return out


def command(app: typer.Typer, name: str, params: list[inspect.Parameter],
            body: Callable[..., None], doc: str) -> None:
    """Register ``body(**params)`` as the command ``name`` with these options."""
    def run(**kwargs: Any) -> None:
        body(**kwargs)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__doc__ = doc
    run.__name__ = name.replace("-", "_")
    app.command(name)(run)


def flag_param(name: str, help: str, *decls: str) -> inspect.Parameter:
    """A boolean command-level flag (``--force``, ``--resume``, ``--dry-run``)."""
    return option(name, bool, False, help, *decls)


__all__ = ["INTERRUPTED", "RESUME", "Commands", "argument", "command", "config_options",
           "config_values", "flag_param", "floats", "option"]
