"""Settings as data: dataclass fields that carry their one-line help, and the command-line options made from them."""

import argparse
import dataclasses
import types
import typing


def setting(default, help: str, **cli):
    """A dataclass field with its help text; cli holds argparse overrides (flag, choices, action, metavar). A bool
    field becomes a switch, off by default."""
    return dataclasses.field(default=default, metadata={"help": help, "cli": cli})


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One --option per field of a settings dataclass, typed, defaulted and explained from its declaration."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        cli = dict(field.metadata.get("cli", {}))
        flag = cli.pop("flag", "--" + field.name.replace("_", "-"))
        kind = _scalar(hints[field.name])
        help_text = field.metadata.get("help", "")
        if kind is bool:  # a switch, off unless given
            parser.add_argument(flag, dest=field.name, action="store_true", help=help_text, **cli)
            continue
        if field.default not in (None, "", ()) and "default" not in help_text:
            help_text += f" (default: {field.default})"
        if typing.get_origin(hints[field.name]) is tuple:  # a repeatable option
            cli.setdefault("action", "append")
            parser.add_argument(flag, dest=field.name, type=kind, default=None, help=help_text, **cli)
        else:
            parser.add_argument(flag, dest=field.name, type=kind, default=field.default, help=help_text, **cli)


def from_options(cls, args: argparse.Namespace):
    """The dataclass built from parsed options; a repeatable option not given keeps the field's default."""
    values = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name)
        values[field.name] = field.default if value is None and field.default == () else \
            tuple(value) if isinstance(value, list) else value
    return cls(**values)


def number_list(text: str, kind: type = int) -> list:
    """Comma-separated numbers, as options take them ("0,64, 256" -> [0, 64, 256]; empty parts are skipped); raises
    ValueError where a part is not a kind. The caller says what the numbers are for, and checks their range."""
    return [kind(part) for part in text.split(",") if part.strip()]


def _scalar(hint) -> type:
    """int for int, int | None and tuple[int, ...]: the type argparse converts each value to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    return hint
