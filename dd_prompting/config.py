"""One configuration engine for every command: typed dataclasses, config files and flags.

A config is a tree of `@dataclass`es whose fields carry `metadata={"help": ...}` (as in trl's
`SFTConfig`). The same tree gives the file format, the command line and the Python API, so the
three cannot drift apart:

    read_config_file(path)               a .toml / .yaml / .yml / .json file as a dict; errors name the file
    from_dict(cls, data)                 a checked instance; errors name the dotted field, the value, the fix
    load(cls, path, base=, overrides=)   defaults < base dicts < the file < flag overrides (a deep merge)
    add_arguments(parser, cls)           one flag per scalar field: `--field-name`, `--section.field`
    overrides_from_args(args, cls)       the flags actually given, as a nested dict for `load(overrides=...)`

Values are checked against the annotations: nested dataclass sections, lists of dataclasses
(`[[models]]`, with errors at `models[gpt-4o].kind` or `models[0].kind`), `dict[str, Any]`,
`Optional` ('none' / 'null' mean None), `Literal` choices, unions such as `int | str`, strict
booleans, and ints widened to floats. An unknown key is an error that names the nearest valid one:
"unknown setting teacher.temprature; did you mean teacher.temperature?".

A dataclass may declare its old spellings, which still load with a FutureWarning:

    __renamed__: ClassVar = {"num_threads": "threads"}          # an old key -> its new name
    __renamed_values__: ClassVar = {"kind": {"dspy": "api"}}    # an old value of a field -> the new value
    __removed__: ClassVar = {"lm_retries": "why, and what to set instead"}   # an error saying so

and one setting may stand for several (a shorthand), filled in within the layer that gives it, so a
field named in the same layer, or in a later one, still wins:

    __shorthands__: ClassVar = {"seed": ("data.seed", "student.seed")}

and a `dict[str, Any]` field may name the dataclass whose fields it overrides with
`metadata={"fields_of": TrainConfig}`, which gives it flags (`--solver.max_steps`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import Field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "read_config_file",
    "from_dict",
    "load",
    "deep_merge",
    "add_arguments",
    "overrides_from_args",
]

_NONE_WORDS = ("none", "null")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the field or the file."""


# --- files -----------------------------------------------------------------------------------------


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a TOML, YAML or JSON config file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"{path}: config files must end in .toml, .yaml, .yml or .json")
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as err:  # each parser has its own error type; all mean "bad file"
        raise ConfigError(f"{path}: not a valid {suffix[1:].upper()} file: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a table of settings, got {type(data).__name__}")
    return data


# --- building dataclasses from dicts ---------------------------------------------------------------


def from_dict(cls: type, data: Any, where: str = ""):
    """Build `cls` from a nested dict, checking every value against its annotation.

    `where` is the dotted path of this section in the whole config (e.g. "teacher"), used in errors.
    An instance of `cls` is returned as is.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'the config'} must be a table of settings, got {_show(data)}")
    data = _upgrade(cls, data, where)
    known = _init_fields(cls)
    _check_unknown(data, known, where)
    hints = _hints(cls)
    values = {name: _check(value, hints[name], _join(where, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # a section's own __post_init__ checks
        raise ConfigError(f"{where}: {err}" if where else str(err)) from err


def load(cls: type, path: str | os.PathLike | None = None, *,
         base: Mapping[str, Any] | Iterable[Mapping[str, Any]] | None = None,
         overrides: Mapping[str, Any] | None = None):
    """`cls` from its defaults, then `base` (a dict or several, e.g. a run's saved config), then the
    file at `path`, then `overrides` (e.g. `overrides_from_args`), each deep-merged over the last.

    Old spellings are brought up to date layer by layer, so an old key in one layer and its new
    name in another (a saved config and a flag) do not collide.
    """
    layers: list[tuple[Mapping[str, Any], str]] = []
    if base is not None:
        layers += [(base, "")] if isinstance(base, Mapping) else [(layer, "") for layer in base]
    if path is not None:
        layers.append((read_config_file(path), str(path)))
    if overrides:
        layers.append((overrides, ""))
    merged: dict[str, Any] = {}
    for layer, source in layers:
        try:
            merged = deep_merge(merged, _upgrade_tree(cls, layer, ""))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}" if source else str(err)) from err
    return from_dict(cls, merged)


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`update` over `base`: tables merge key by key, anything else (lists too) is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _Mismatch(Exception):
    """The value is not of this type (a union tries its next member)."""


def _check(value: Any, hint: Any, path: str) -> Any:
    """Check (and gently convert: int -> float, 'none' -> None) one value against its annotation."""
    members, optional = _members(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in _NONE_WORDS):
        if optional or hint is Any:
            return None
        raise ConfigError(f"{path} must be {_describe(hint)}, got None")
    # Strings last, so that `int | str` reads 8 as 8 and only a non-number as text.
    for member in sorted(members, key=lambda member: member is str):
        try:
            return _check_one(value, member, path)
        except _Mismatch:
            continue
    raise ConfigError(f"{path} must be {_describe(hint)}, got {_show(value)}")


def _check_one(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if is_dataclass(hint):
        if isinstance(value, (hint, Mapping)):
            return from_dict(hint, value, path)
        raise _Mismatch
    if origin is Literal:
        # `True == 1`, so a bool must match a bool choice and a number a number.
        if any(value == choice and type(value) is type(choice) for choice in typing.get_args(hint)):
            return value
        raise _Mismatch
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(hint)
        item_hint = args[0] if args else Any
        items = [_check(item, item_hint, f"{path}[{_label(item, index)}]") for index, item in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        args = typing.get_args(hint)
        value_hint = args[1] if len(args) == 2 else Any
        return {key: _check(item, value_hint, _join(path, str(key))) for key, item in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if hint in (int, str):
        if isinstance(value, hint) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value  # an annotation this engine does not check (a TypeVar, a Callable, ...)


def _upgrade(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One section's old spellings: renamed keys and values still load (with a FutureWarning)."""
    data = dict(data)
    for old, why in getattr(cls, "__removed__", {}).items():
        if old in data:
            raise ConfigError(f"{_join(where, old)} is no longer a setting: {why}")
    for old, new in getattr(cls, "__renamed__", {}).items():
        if old in data:
            old_path, new_path = _join(where, old), _join(where, new)
            if new in data:
                raise ConfigError(f"{old_path} and {new_path} are one setting ({old} is its old name); "
                                  f"give only {new_path}")
            _warn(f"{old_path} is now spelled {new_path}")
            data[new] = data.pop(old)
    for name, renamed in getattr(cls, "__renamed_values__", {}).items():
        value = data.get(name)
        if isinstance(value, str) and value in renamed:
            _warn(f"{_join(where, name)} = {value!r} is now {renamed[value]!r}")
            data[name] = renamed[value]
    for name, targets in getattr(cls, "__shorthands__", {}).items():
        if data.get(name) is not None:
            for target in targets:
                section, _, key = target.rpartition(".")
                if section and not isinstance(data.get(section) or {}, Mapping):
                    continue  # from_dict names the malformed section
                table = data if not section else dict(data.get(section) or {})
                table.setdefault(key, data[name])
                if section:
                    data[section] = table
    return data


def _upgrade_tree(cls: type, data: Any, where: str) -> Any:
    """`_upgrade` on a section and every section below it, leaving the rest to `from_dict`."""
    if not isinstance(data, Mapping):
        return data
    data = _upgrade(cls, data, where)
    hints = _hints(cls)
    for name in list(data):
        if name not in hints:
            continue
        section = _section_type(hints[name])
        if section is not None:
            data[name] = _upgrade_tree(section, data[name], _join(where, name))
            continue
        item = _list_item_section(hints[name])
        if item is not None and isinstance(data[name], list):
            data[name] = [_upgrade_tree(item, entry, f"{_join(where, name)}[{_label(entry, index)}]")
                          for index, entry in enumerate(data[name])]
    return data


def _warn(message: str) -> None:
    """A FutureWarning pointing at the first caller outside this engine (the code that loaded the config)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, FutureWarning, stacklevel=level)


def _check_unknown(data: Mapping[str, Any], known: dict[str, Field], where: str) -> None:
    unknown = [key for key in data if key not in known]
    if not unknown:
        return
    problems, unmatched = [], False
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(known), n=1)
        problems.append(f"unknown setting {_join(where, str(key))}"
                        + (f"; did you mean {_join(where, close[0])}?" if close else ""))
        unmatched = unmatched or not close
    message = "; ".join(problems)
    if unmatched:
        message += f" (the settings {'of ' + where if where else 'at the top level'} are: {', '.join(sorted(known))})"
    raise ConfigError(message)


# --- command-line flags ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, sections: Iterable[str] | None = None,
                  aliases: Mapping[str, str] | None = None, title: str | None = None) -> None:
    """Add one flag per scalar field of `cls`: `--field-name` at the top level, `--section.field` below.

    Each flag has its field's help, a type (choices for a Literal, `--x/--no-x` for a bool, 'none'
    for an optional field) and no default, so a flag left out overrides nothing. `sections` limits
    the nested sections that get flags; `aliases` gives extra names (`{"only_models": "--models"}`);
    `title` puts the top-level flags in a group of that name.
    """
    aliases = dict(aliases or {})
    groups: dict[str, Any] = {}
    for spec in _flag_specs(cls, sections):
        if spec.section:
            if spec.section not in groups:
                groups[spec.section] = parser.add_argument_group(spec.section, spec.section_help or None)
            group = groups[spec.section]
        else:
            if "" not in groups:
                groups[""] = parser.add_argument_group(title) if title else parser
            group = groups[""]
        names = [spec.flag]
        if spec.dest in aliases:
            names.insert(0, aliases[spec.dest])
        group.add_argument(*names, dest=spec.dest, default=argparse.SUPPRESS, **_flag_options(spec))


def overrides_from_args(args: argparse.Namespace | Mapping[str, Any], cls: type, *,
                        sections: Iterable[str] | None = None) -> dict[str, Any]:
    """The flags of `add_arguments(parser, cls)` actually given, as a nested dict (`{"teacher": {...}}`)."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    overrides: dict[str, Any] = {}
    for spec in _flag_specs(cls, sections):
        if spec.dest not in given:
            continue
        node = overrides
        *parents, leaf = spec.dest.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = given[spec.dest]
    return overrides


class _FlagSpec(typing.NamedTuple):
    dest: str  # the dotted path: "teacher.threads"
    flag: str
    hint: Any
    help: str
    section: str  # "" at the top level
    section_help: str
    old_values: tuple = ()  # renamed values a Literal flag still accepts


def _flag_specs(cls: type, sections: Iterable[str] | None, prefix: str = "", section_help: str = "") -> list[_FlagSpec]:
    wanted = None if sections is None else set(sections)
    hints = _hints(cls)
    renamed_values = getattr(cls, "__renamed_values__", {})
    specs: list[_FlagSpec] = []
    nested: list[_FlagSpec] = []
    for item in _init_fields(cls).values():
        hint, help_text = hints[item.name], item.metadata.get("help", "")
        dest = f"{prefix}{item.name}"
        section = _section_type(hint)
        schema = item.metadata.get("fields_of")
        if section is not None or schema is not None:
            if not prefix and wanted is not None and item.name not in wanted:
                continue
            nested += _flag_specs(section or schema, None, f"{dest}.", help_text)
            continue
        if _is_table(hint) or _list_item_section(hint) is not None:
            continue  # free-form tables and lists of sections are set in files
        flag = f"--{dest}" if prefix else f"--{item.name.replace('_', '-')}"
        specs.append(_FlagSpec(dest, flag, hint, help_text, prefix.rstrip("."), section_help,
                               tuple(renamed_values.get(item.name, ()))))
    # Old names take flags too (hidden), so that old command lines get the same warning or error as old files.
    old_names = [(old, hints[new]) for old, new in getattr(cls, "__renamed__", {}).items()]
    old_names += [(old, str) for old in getattr(cls, "__removed__", {})]
    for old, hint in old_names:
        flag = f"--{prefix}{old}" if prefix else f"--{old.replace('_', '-')}"
        specs.append(_FlagSpec(f"{prefix}{old}", flag, hint, argparse.SUPPRESS, prefix.rstrip("."), section_help))
    return specs + nested


def _flag_options(spec: _FlagSpec) -> dict[str, Any]:
    members, optional = _members(spec.hint)
    options: dict[str, Any] = {"help": spec.help}
    if members == [bool]:
        options["action"] = argparse.BooleanOptionalAction
        return options
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        choices = list(typing.get_args(members[0]))
        shown = [str(choice) for choice in choices] + (["none"] if optional else [])
        options["metavar"] = "{" + ",".join(shown) + "}"
        options["choices"] = choices + list(spec.old_values) + ([None] if optional else [])
    items = [member for member in members if typing.get_origin(member) in (list, tuple) or member in (list, tuple)]
    if items:
        # `list[str]` or `str | list[str]`: one or more values, each parsed as the list's item type.
        item_args = typing.get_args(items[0])
        options["nargs"] = "+"
        options["type"] = _text_parser([item_args[0]] if item_args else [str], optional)
    else:
        options["type"] = _text_parser(members, optional)
    options.setdefault("metavar", "|".join(_type_word(member) for member in members))
    return options


def _text_parser(members: list[Any], optional: bool):
    """A flag's text -> the field's value: 'none' for an optional field, then each type of a union."""

    def parse(text: str):
        if optional and text.lower() in _NONE_WORDS:
            return None
        for member in sorted(members, key=lambda member: member is str):
            if typing.get_origin(member) is Literal:
                for choice in typing.get_args(member):
                    if str(choice) == text:
                        return choice
                return text  # argparse's choices check names the allowed values
            if member in (int, float):
                try:
                    return member(text)
                except ValueError:
                    continue
            if member is str or member is Any:
                return text
        raise argparse.ArgumentTypeError(f"expected {' or '.join(_describe(m) for m in members)}"
                                         f"{' or none' if optional else ''}, got {text!r}")

    return parse


# --- helpers ---------------------------------------------------------------------------------------


def _members(hint: Any) -> tuple[list[Any], bool]:
    """The types of a union (or `[hint]`), and whether None is one of them."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return [arg for arg in args if arg is not type(None)], type(None) in args
    return [hint], False


def _section_type(hint: Any) -> type | None:
    """The dataclass of a nested section (`TeacherConfig`, or `GeneratorConfig | None`), else None."""
    members, _ = _members(hint)
    return members[0] if len(members) == 1 and is_dataclass(members[0]) else None


def _list_item_section(hint: Any) -> type | None:
    members, _ = _members(hint)
    if len(members) == 1 and typing.get_origin(members[0]) in (list, tuple):
        args = typing.get_args(members[0])
        return args[0] if args and is_dataclass(args[0]) else None
    return None


def _is_table(hint: Any) -> bool:
    members, _ = _members(hint)
    return any(typing.get_origin(member) is dict or member is dict for member in members)


def _describe(hint: Any) -> str:
    members, optional = _members(hint)
    if len(members) > 1 or optional:
        return " or ".join(_describe(member) for member in members) + (" or none" if optional else "")
    hint = members[0]
    origin = typing.get_origin(hint)
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin in (list, tuple) or hint in (list, tuple):
        args = typing.get_args(hint)
        return f"a list (of {_describe(args[0])})" if args and args[0] is not Any else "a list"
    if origin is dict or hint is dict:
        return "a table"
    if is_dataclass(hint):
        return "a table of settings"
    return {bool: "true or false", int: "an int", float: "a float", str: "a str", Any: "any value"}.get(
        hint, f"a {getattr(hint, '__name__', hint)}")


def _type_word(hint: Any) -> str:
    return {int: "INT", float: "FLOAT", str: "TEXT"}.get(hint, getattr(hint, "__name__", "VALUE").upper())


def _label(item: Any, index: int) -> str:
    """How an entry of a list of sections is named in errors: its `name`, else its index."""
    if isinstance(item, Mapping) and isinstance(item.get("name"), str) and item["name"]:
        return item["name"]
    name = getattr(item, "name", None)
    return name if isinstance(name, str) and name else str(index)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _show(value: Any) -> str:
    if isinstance(value, (Mapping, list, tuple)):
        return f"a {type(value).__name__} ({value!r})" if len(repr(value)) < 80 else f"a {type(value).__name__}"
    return repr(value)


def _init_fields(cls: type) -> dict[str, Field]:
    return {item.name: item for item in fields(cls) if item.init}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)

