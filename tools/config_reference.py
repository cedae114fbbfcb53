"""Generate docs/reference/config.md, the config reference, from the pydantic config classes themselves.

Every key's type, default and constraints come from pydantic's field info; its documentation comes from the source:
the `#` comment lines directly above the field (and a trailing `# ...` on its line), else `Field(description=...)`,
else an entry `Class.field: text` in tools/config_reference_notes.yaml (for keys whose source carries no comment).
A class's docstring introduces its section. Nothing is written by hand in the page, so it cannot drift from the
code: `python -m tools.config_reference --check` (run by the tests) fails when the page is stale or a key has no
documentation.

    python -m tools.config_reference            # rewrite docs/reference/config.md
    python -m tools.config_reference --check    # exit 1 if it is stale or a key is undocumented
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import re
import sys
import tokenize
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "reference" / "config.md"
NOTES = Path(__file__).with_name("config_reference_notes.yaml")


@dataclass
class Root:
    """One YAML file format: its top-level class, a title and what the file is."""

    title: str
    cls: type[BaseModel]
    intro: str


@dataclass
class Section:
    """One config class as the page shows it: where it sits in the YAML (key paths) and its fields."""

    cls: type[BaseModel]
    paths: list[str] = field(default_factory=list)


def roots() -> list[Root]:
    """The file formats the reference covers (imported here so that `--help` needs no torch)."""
    from projects.home.recap.schema import RecapConfig
    from projects.home.recap.tune.space import SearchSpace

    return [
        Root("Experiment config", RecapConfig,
             "One YAML file per experiment (`recap train --config FILE`, `recap validate-config FILE`). Key paths "
             "are those of `--set`; `<name>` stands for a key you choose (a task, a validation set, a history "
             "group), `[i]` for an item of a list."),
        Root("Search space", SearchSpace,
             "The file of `recap tune --space FILE`: the base experiment, the metric, and one distribution per key "
             "path of the experiment config."),
    ]


# --- documentation from the source ----------------------------------------------------------------------------------
@cache
def _module_comments(path: str) -> dict[str, dict[str, str]]:
    """{class name: {field name: comment text}} for every class of one source file: the comment block directly
    above each annotated field (no blank line between) plus a trailing comment on the field's own lines."""
    source = Path(path).read_text()
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and lines[token.start[0] - 1][: token.start[1]].strip():
            trailing[token.start[0]] = token.string.lstrip("#").strip()
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        docs = found.setdefault(node.name, {})
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            above: list[str] = []
            row = stmt.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#"):
                above.insert(0, lines[row].strip().lstrip("#").strip())
                row -= 1
            after = [trailing[r] for r in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if r in trailing]
            text = " ".join(part for part in above + after if part)
            if text:
                docs[stmt.target.id] = text
    return found


@cache
def notes() -> dict[str, str]:
    """Documentation of keys whose source has no comment, as `Class.field: text`."""
    data = yaml.safe_load(NOTES.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SystemExit(f"{NOTES}: expected a mapping of `Class.field: text`")
    return data


def field_doc(cls: type[BaseModel], name: str) -> str | None:
    """A field's documentation: its source comment, its Field description or its note; else, for a key holding
    one config class, that class's first docstring sentence, or a mention of the key in its own class's docstring.
    None if it has none of these."""
    for klass in cls.__mro__:
        if name in getattr(klass, "__annotations__", {}):
            source = inspect.getsourcefile(klass)
            text = _module_comments(source).get(klass.__name__, {}).get(name) if source else None
            text = text or cls.model_fields[name].description or notes().get(f"{klass.__name__}.{name}")
            return text or _implied_doc(cls, name)
    return None


def _implied_doc(cls: type[BaseModel], name: str) -> str | None:
    """The documentation a key has by what it holds (a documented config class) or by its class's docstring."""
    nested = {c for c, _ in _nested(cls.model_fields[name].annotation, name)}
    if len(nested) == 1:
        (inner,) = nested
        first = class_doc(inner).split("\n\n")[0]
        if first:
            return f"{first} (see [{inner.__name__}](#{anchor(inner)}))"
    if re.search(rf"(?<![\w.]){re.escape(name)}\b", class_doc(cls)):
        return "See the description above."
    return None


def class_doc(cls: type[BaseModel]) -> str:
    """The class docstring, dedented (pydantic models inherit none)."""
    return inspect.cleandoc(cls.__doc__) if cls.__dict__.get("__doc__") else ""


# --- types and defaults ---------------------------------------------------------------------------------------------
def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def format_type(tp: Any) -> str:
    """A readable type: `int | None`, `list[str]`, `"a" | "b"`, nested configs as links to their sections."""
    if tp is type(None):
        return "null"
    if _is_config(tp):
        return f"[{tp.__name__}](#{anchor(tp)})"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in _args(tp))
    if _is_union(tp):
        return " | ".join(format_type(a) for a in _args(tp))
    if origin in (list, tuple, dict, set):
        inner = ", ".join("..." if a is Ellipsis else format_type(a) for a in _args(tp))
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _nested(tp: Any, path: str) -> list[tuple[type[BaseModel], str]]:
    """(config class, key path) for every config class inside an annotation, with [i] / <name> for containers."""
    if _is_config(tp):
        return [(tp, path)]
    origin = typing.get_origin(tp)
    if _is_union(tp):
        return [pair for a in _args(tp) for pair in _nested(a, path)]
    if origin in (list, tuple, set):
        return [pair for a in _args(tp) if a is not Ellipsis for pair in _nested(a, f"{path}[i]")]
    if origin is dict:
        return _nested(_args(tp)[1], f"{path}.<name>")
    return []


def format_default(info: Any) -> str:
    """The default as YAML would write it; `required` when there is none."""
    if info.is_required():
        return "required"
    value = info.default_factory() if info.default is PydanticUndefined else info.default
    if isinstance(value, BaseModel):
        return "its defaults"
    return f"`{yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix('...').strip()}`"


_BOUNDS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥", "max_length": "length ≤"}


def format_constraints(info: Any) -> str:
    """pydantic's numeric and length bounds, as `> 0, ≤ 1`."""
    parts = []
    for item in info.metadata:
        for attr, symbol in _BOUNDS.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def anchor(cls: type[BaseModel]) -> str:
    return cls.__name__.lower()


# --- the page -------------------------------------------------------------------------------------------------------
def sections(root: type[BaseModel]) -> list[Section]:
    """Every config class reachable from a root, in first-met (depth-first) order, with all its key paths."""
    found: dict[type[BaseModel], Section] = {}

    def visit(cls: type[BaseModel], path: str) -> None:
        known = cls in found
        section = found.setdefault(cls, Section(cls))
        if path and path not in section.paths:
            section.paths.append(path)
        if known:
            return
        for name, info in cls.model_fields.items():
            for nested, nested_path in _nested(info.annotation, f"{path}.{name}" if path else name):
                visit(nested, nested_path)

    visit(root, "")
    return list(found.values())


def undocumented() -> list[str]:
    """`Class.field` of every key, in every root, that has no documentation."""
    missing = []
    for root in roots():
        for section in sections(root.cls):
            for name in section.cls.model_fields:
                if not field_doc(section.cls, name):
                    missing.append(f"{section.cls.__name__}.{name}")
    return sorted(set(missing))


def stale_notes() -> list[str]:
    """Notes naming a key that no longer exists."""
    known = {f"{s.cls.__name__}.{n}" for r in roots() for s in sections(r.cls) for n in s.cls.model_fields}
    return sorted(set(notes()) - known)


def _escape(text: str) -> str:
    """Angle brackets outside code spans as entities, so `list<int64>` in prose is not read as an HTML tag."""
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _cell(text: str) -> str:
    return _escape(" ".join(text.split())).replace("|", "\\|")


def _groups(cls: type[BaseModel]) -> list[str]:
    lines = [f"Exactly one of {', '.join(f'`{n}`' for n in g)} is set." for g in getattr(cls, "exactly_one_of", ())]
    lines += [f"At most one of {', '.join(f'`{n}`' for n in g)} is set." for g in getattr(cls, "at_most_one_of", ())]
    return lines


def render_section(section: Section) -> str:
    cls = section.cls
    out = [f"### {cls.__name__} {{#{anchor(cls)}}}", ""]
    if section.paths:
        where = ", ".join(f"`{p}`" for p in section.paths[:6])
        more = f" and {len(section.paths) - 6} more" if len(section.paths) > 6 else ""
        out += [f"At {where}{more}.", ""]
    doc = class_doc(cls)
    if doc:
        out += [_escape(doc), ""]
    out += _groups(cls) + ([""] if _groups(cls) else [])
    if not cls.model_fields:
        return "\n".join(out + ["No keys: write `{}`.", ""])
    out += ["| key | type | default | documentation |", "| --- | --- | --- | --- |"]
    for name, info in cls.model_fields.items():
        bounds = format_constraints(info)
        kind = format_type(info.annotation) + (f" ({bounds})" if bounds else "")
        out.append(f"| `{name}` | {_cell(kind)} | {_cell(format_default(info))} | {_cell(field_doc(cls, name) or '')} |")
    return "\n".join(out + [""])


def render() -> str:
    parts = [
        "# Config reference",
        "",
        "<!-- Generated by `python -m tools.config_reference` from the config classes; do not edit by hand. -->",
        "",
        "Every key of the YAML files, generated from the config classes (`core/train_config.py`,",
        "`projects/home/recap/schema.py`, `model_config.py`, `data/config.py`, `tune/space.py`): its type, default,",
        "bounds and documentation. Unknown keys are errors, and so is a group of alternatives with the wrong number",
        "of members set. See [Configuring an experiment](../guides/configuring.md) for how files are loaded,",
        "`extends`, `${ENV}` and `--set`.",
        "",
    ]
    for root in roots():
        parts += [f"## {root.title}", "", root.intro, ""]
        parts += [render_section(s) for s in sections(root.cls)]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the page is stale or a key is undocumented")
    args = parser.parse_args(argv)
    problems = [f"{key}: no documentation (a `#` comment above the field, or an entry in {NOTES.name})"
                for key in undocumented()]
    problems += [f"{key}: in {NOTES.name} but no such config key" for key in stale_notes()]
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            problems.append(f"{PAGE.relative_to(REPO)} is stale: run `python -m tools.config_reference`")
    else:
        PAGE.parent.mkdir(parents=True, exist_ok=True)
        PAGE.write_text(text)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
