"""Validated configs: a strict pydantic base class, YAML loading with ${ENV} substitution and --set overrides.

Every config class derives from `BaseConfig`, which forbids unknown keys so a typo in YAML is an error. Field groups
where exactly one (or at most one) member may be set are declared on the class and checked at load time.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

__all__ = [
    "BaseConfig",
    "ConfigError",
    "apply_overrides",
    "dump_yaml",
    "load_config",
    "split_key_path",
    "substitute_env",
]

C = TypeVar("C", bound="BaseConfig")

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config could not be loaded; the message is one readable block naming file, key path and problem."""


class BaseConfig(BaseModel):
    """Strict base: unknown keys are errors; declare `exactly_one_of` / `at_most_one_of` field groups on subclasses."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_default=True)

    exactly_one_of: ClassVar[tuple[tuple[str, ...], ...]] = ()
    at_most_one_of: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @model_validator(mode="after")
    def _check_field_groups(self):
        for group in self.exactly_one_of:
            chosen = [name for name in group if getattr(self, name) is not None]
            if len(chosen) != 1:
                got = ", ".join(chosen) if chosen else "none"
                raise ValueError(f"exactly one of {', '.join(group)} must be set (got {got})")
        for group in self.at_most_one_of:
            chosen = [name for name in group if getattr(self, name) is not None]
            if len(chosen) > 1:
                raise ValueError(f"at most one of {', '.join(group)} may be set (got {', '.join(chosen)})")
        return self

    def which(self, group: Sequence[str]) -> str | None:
        """Name of the member of a field group that is set, or None."""
        for name in group:
            if getattr(self, name) is not None:
                return name
        return None


def substitute_env(node: Any, path: str = "", env: Mapping[str, str] | None = None) -> Any:
    """Replace ${NAME} (or ${NAME:-default}) in every string of a parsed YAML tree; an unset NAME is an error."""
    env = os.environ if env is None else env
    if isinstance(node, dict):
        return {k: substitute_env(v, f"{path}.{k}" if path else str(k), env) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute_env(v, f"{path}[{i}]", env) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable ${{{name}}} is not set (used at {path or '<root>'})")

    whole = _ENV_PATTERN.fullmatch(node)
    value = _ENV_PATTERN.sub(replace, node)
    # A value that is nothing but ${NAME} stays the string NAME holds: the field's type decides (validation turns
    # "12" into 12 for a number field, while "12:30", "0755" or "2024_01" stay as written for a string field).
    # Only a list, a mapping or null written in YAML becomes that structure.
    if whole and value.strip():
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if parsed is None or isinstance(parsed, (list, dict)):
            return parsed
    return value


def split_key_path(key: str) -> list[tuple[str, bool]]:
    """--set's KEY.PATH as (segment, quoted) pairs: dots separate segments, except inside double quotes, so
    `tables."history.author_id".num_embeddings` names the key `history.author_id`."""
    segments: list[tuple[str, bool]] = []
    current, quoted, in_quotes = "", False, False
    for char in key:
        if char == '"':
            if not in_quotes and current:
                raise ConfigError(f"--set {key}: a quote must open a whole segment (after a dot), not {current!r}")
            in_quotes, quoted = not in_quotes, True
        elif char == "." and not in_quotes:
            segments.append((current, quoted))
            current, quoted = "", False
        elif quoted and not in_quotes:
            raise ConfigError(f"--set {key}: a quoted segment must be followed by a dot, not {char!r}")
        else:
            current += char
    if in_quotes:
        raise ConfigError(f"--set {key}: unbalanced double quote")
    segments.append((current, quoted))
    for segment, was_quoted in segments:
        if not segment and not was_quoted:
            raise ConfigError(f"--set {key}: empty segment in the key path (two dots, or one at an end)")
    return segments


def _dict_key(node: dict, segments: list[tuple[str, bool]], i: int, key: str, where: str) -> tuple[str, int]:
    """(the key of `node` that segments[i:] start with, the index of the next segment). Unquoted segments joined
    by dots may name one key that holds dots (a history column `history.author_id`): the longest such run that is
    an existing key is taken, and a choice between two existing keys is an error asking for quotes."""
    segment, quoted = segments[i]
    if quoted:
        return segment, i + 1
    matches = []
    j = i + 1
    while j <= len(segments) and (j == i + 1 or not segments[j - 1][1]):
        name = ".".join(s for s, _ in segments[i:j])
        if name in node:
            matches.append((name, j))
        j += 1
    if len(matches) > 1:
        names = " and ".join(repr(name) for name, _ in matches)
        raise ConfigError(f"--set {key}: {names} are both keys at {where or '<root>'}; quote the one meant, "
                          f'e.g. "{matches[-1][0]}"')
    return matches[0] if matches else (segment, i + 1)


def _set_value(data: dict, key: str, raw: str) -> tuple[list[Any], Any]:
    """Set one override's value in `data`; returns (the key path it resolved to, the value)."""
    segments = split_key_path(key)
    node: Any = data
    path: list[Any] = []
    i = 0
    while i < len(segments):
        where = _key_path(path)
        if isinstance(node, list):
            segment = segments[i][0]
            if not segment.isdigit() or int(segment) >= len(node):
                raise ConfigError(f"--set {key}: {_key_path([*path, segment])} is not an index of a list of "
                                  f"{len(node)} items")
            part: Any = int(segment)
            i += 1
        elif isinstance(node, dict):
            part, i = _dict_key(node, segments, i, key, where)
        else:
            raise ConfigError(f"--set {key}: {where} is a {type(node).__name__}, not a section")
        path.append(part)
        if i == len(segments):
            try:
                value = yaml.safe_load(raw) if raw.strip() else raw
            except yaml.YAMLError as exc:
                raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML: {exc}") from None
            node[part] = value
            return path, value
        if isinstance(node, dict) and node.get(part) is None:
            node[part] = {}
        node = node[part]
    raise AssertionError("unreachable: a key path has at least one segment")


def apply_overrides(data: dict, overrides: Iterable[str], schema: type[BaseModel] | None = None) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML; `"..."` quotes a segment holding dots) to a nested dict,
    creating missing levels. With `schema`, setting one member of an exactly-one/at-most-one group to a value drops
    the other members the config had (`training.num_train_steps=100` replaces `num_epochs`), unless an override
    sets them too."""
    assigned: list[tuple[list[Any], Any]] = []
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY.PATH=VALUE, got {override!r}")
        assigned.append(_set_value(data, key.strip(), raw))
    if schema is not None:
        paths = [tuple(path) for path, _ in assigned]
        for path, value in assigned:
            if value is not None:
                _drop_group_alternatives(data, schema, path, paths)
    return data


def _drop_group_alternatives(data: dict, schema: type[BaseModel], path: list[Any], assigned: list[tuple]) -> None:
    """Remove from `data` the members of the field groups of path[-1] other than it, where no override set them."""
    parent: Any = data
    for part in path[:-1]:
        parent = parent[part]
    if not isinstance(parent, dict):
        return
    for cls in _types_at(schema, path[:-1]):
        if not (isinstance(cls, type) and issubclass(cls, BaseConfig)):
            continue
        for group in (*cls.exactly_one_of, *cls.at_most_one_of):
            if path[-1] not in group:
                continue
            for other in group:
                if other != path[-1] and other in parent and (*path[:-1], other) not in assigned:
                    del parent[other]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line})",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML:\n  {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


EXTENDS = "extends"


def merge_configs(base: dict, update: dict) -> dict:
    """`update` over `base`: mappings merge key by key, any other value (list, scalar, null) replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A YAML file with its `extends: BASE.yaml` (a path relative to the file) merged under it, recursively."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: `{EXTENDS}` forms a cycle ({cycle})")
    data = _read_yaml(path)
    base = data.pop(EXTENDS, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: `{EXTENDS}` must be the path of a base config file, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if base_path.is_dir():
        raise ConfigError(f"{path}: `{EXTENDS}: {base}` names a directory ({base_path}), not a config file")
    if not base_path.is_file():
        raise ConfigError(f"{path}: `{EXTENDS}: {base}` names no file ({base_path} not found)")
    return merge_configs(_read_with_bases(base_path, (*chain, resolved)), data)


def load_config(
    path: str | os.PathLike | None,
    schema: type[C],
    overrides: Iterable[str] = (),
    data: dict | None = None,
) -> C:
    """Load (with `extends: BASE.yaml`, the base file's keys under this file's), substitute ${ENV}, apply --set
    overrides and validate a YAML config against `schema`."""
    source = Path(path) if path is not None else Path("<dict>")
    raw = _read_with_bases(source) if path is not None else dict(data or {})
    raw = substitute_env(raw)
    raw = apply_overrides(raw, overrides, schema)
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, schema, source)) from None


def dump_yaml(config: BaseModel) -> str:
    """The fully resolved config (defaults filled in) as YAML."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


def format_validation_error(exc: ValidationError, schema: type[BaseModel], source: Path | str) -> str:
    """Turn a pydantic error into one block: file, then one line per problem with its key path."""
    lines = [f"{source}: invalid config ({exc.error_count()} problem{'s' if exc.error_count() != 1 else ''})"]
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not _is_internal_loc(p)]
        key = _key_path(loc) or "<root>"
        kind = err["type"]
        if kind == "extra_forbidden":
            valid = _valid_keys(schema, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
            msg = "unknown key"
            if hint:
                msg += f"; did you mean {_key_path(loc[:-1] + [hint[0]])!r}?"
            elif valid:
                msg += f"; valid keys here: {', '.join(sorted(valid))}"
        elif kind == "missing":
            msg = "missing required key"
        else:
            msg = err["msg"]
            if "input" in err and kind not in ("value_error", "assertion_error") and not isinstance(
                err["input"], dict
            ):
                msg += f" (got {err['input']!r})"
        msg = msg.removeprefix("Value error, ")
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _is_internal_loc(part: Any) -> bool:
    # pydantic adds union-member and function-validator names to locations; they are not YAML keys.
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)


def _key_path(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(tp: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(tp) for t in _unwrap(arg) if t is not type(None)]
    return [tp]


def _types_at(schema: type[BaseModel], loc: Sequence[Any]) -> list[Any]:
    """The concrete types a key path can hold, found by walking the schema's type annotations."""
    candidates: list[Any] = [schema]
    for part in loc:
        nxt: list[Any] = []
        for tp in candidates:
            for t in _unwrap(tp):
                origin = typing.get_origin(t)
                if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
                    field = t.model_fields.get(part) or next(
                        (f for f in t.model_fields.values() if f.alias == part), None
                    )
                    if field is not None:
                        nxt.append(field.annotation)
                elif origin in (dict, Mapping) or origin is typing.get_origin(Mapping[str, int]):
                    nxt.append(typing.get_args(t)[1])
                elif origin in (list, tuple, Sequence) and isinstance(part, int):
                    nxt.append(typing.get_args(t)[0])
        candidates = nxt
    return [t for tp in candidates for t in _unwrap(tp)]


def _valid_keys(schema: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """Field names (and aliases) valid at a key path."""
    keys: list[str] = []
    for t in _types_at(schema, loc):
        if isinstance(t, type) and issubclass(t, BaseModel):
            for name, field in t.model_fields.items():
                keys.append(field.alias or name)
    return keys
