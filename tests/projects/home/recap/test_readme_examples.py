"""What README.md and the documentation site (docs/) show stays true:

- every command of docs/guides/configuring.md runs as written (demo.yaml being the shipped
  projects/home/recap/config/demo.yaml, its data a small generated set);
- every `recap` command of every page names a command that exists, with options that command takes, and every
  `make` target shown exists;
- every YAML example is valid YAML whose keys are keys of the experiment config (or of a `recap tune` search space).
"""

import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from projects.home.recap.data.synthetic import generate
from projects.home.recap.main import COMMANDS, command_parser, main
from projects.home.recap.schema import RecapConfig
from projects.home.recap.tune.space import SearchSpace

REPO = Path(__file__).resolve().parents[4]
CONFIGS = REPO / "projects/home/recap/config"
# The pages a user reads; the config reference is generated from the config classes and checked by tests/test_docs.py.
PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").rglob("*.md") if p.name != "config.md")]


def _blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a page (indented ones inside list items too)."""
    text = path.read_text()
    return [textwrap_dedent(b) for b in re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, re.S | re.M)]


def textwrap_dedent(match: tuple[str, str]) -> str:
    indent, body = match
    return "\n".join(line[len(indent):] if line.startswith(indent) else line for line in body.splitlines())


def _command_lines(path: Path) -> list[str]:
    """The shell commands of a page's bash blocks: continuation lines joined, comments cut, `a; b` split."""
    commands = []
    for block in _blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            for part in line.split(";"):
                part = re.sub(r"^(do|then|done)\b\s*", "", part.strip())
                if part and not part.startswith("#"):
                    commands.append(part)
    return commands


def _recap_argv(command: str) -> list[str] | None:
    """The arguments after `recap` (or torchrun's `-m projects.home.recap.main`), environment assignments skipped;
    None for another program."""
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    if words and words[0] in ("recap", ".venv/bin/recap"):
        return words[1:]
    if words and words[0] == "torchrun" and "projects.home.recap.main" in words:
        rest = words[words.index("projects.home.recap.main") + 1:]
        return rest[1:] if rest[:1] == ["--"] else rest
    return None


def _page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- the commands of "Configuring an experiment" run -----------------------------------------------------------------
CONFIGURING = REPO / "docs/guides/configuring.md"
COMMANDS_RUN = [c for c in _command_lines(CONFIGURING) if _recap_argv(c) is not None]


def test_the_section_has_examples():
    assert len(COMMANDS_RUN) >= 3 and all(c.startswith(".venv/bin/recap ") for c in COMMANDS_RUN)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo_data")
    generate(directory, 300, seed=3, rows_per_file=300, row_group_size=100)
    return directory


@pytest.mark.parametrize("command", COMMANDS_RUN)
def test_readme_command_runs(command, demo_data, monkeypatch, capsys):
    monkeypatch.setenv("RECAP_DATA_DIR", str(demo_data))
    monkeypatch.chdir(REPO)
    argv = shlex.split(command)[1:]
    # The page writes the shipped config's path once, then its name.
    argv = [str(CONFIGS / a) if a.endswith(".yaml") and not Path(a).exists() else a for a in argv]
    assert main(argv) == 0, capsys.readouterr().err


# --- every command shown names real commands and options -------------------------------------------------------------
def _options(name: str) -> set[str]:
    import importlib

    module = importlib.import_module(f"projects.home.recap.commands.{COMMANDS[name][0]}")
    return {s for action in command_parser(name, module)._actions for s in action.option_strings}


def command_problems(command: str) -> list[str]:
    """What is wrong with one `recap` command as shown: an unknown command, or options it does not take."""
    argv = _recap_argv(command)
    if argv is None:
        return []
    name = next((" ".join(argv[:n]) for n in (2, 1) if " ".join(argv[:n]) in COMMANDS), None)
    if name is None:
        return [f"no command {' '.join(argv[:2])!r}"]
    shown = {w.strip("[]").split("=")[0] for w in argv if w.strip("[").startswith("--") and w.strip("[]") != "--"}
    unknown = sorted(shown - _options(name))
    return [f"recap {name} takes no {', '.join(unknown)}"] if unknown else []


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_command_shown_exists(page):
    problems = []
    for command in _command_lines(page):
        problems += [f"{command}: {p}" for p in command_problems(command)]
        words = command.split()
        if words[0] == "make":
            targets = [w for w in words[1:] if "=" not in w]
            problems += [f"{command}: no make target {t!r}" for t in targets if t not in _make_targets()]
    assert not problems, "\n".join(problems)


def test_command_problems_are_found():
    # The check above must be able to fail.
    assert command_problems("recap train --config FILE --no-such-option 1")
    assert command_problems("recap no-such-command --x")
    assert command_problems("RECAP_DATA_DIR=d recap evaluate --config F --datase test")
    assert not command_problems("RECAP_DATA_DIR=d recap evaluate --config F [--dataset NAME ...]")
    assert command_problems("torchrun --nproc_per_node 2 -m projects.home.recap.main -- evaluate --runs D")


# --- every YAML example is a piece of a real config ------------------------------------------------------------------
def _config_classes(annotation) -> list[tuple[type[BaseModel], str]]:
    """(config class, container) of an annotation: "" for the class itself, "list" or "dict" for its items."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    if origin in (list, tuple):
        return [(c, "list") for a in typing.get_args(annotation) for c, _ in _config_classes(a)]
    if origin is dict:
        return [(c, "dict") for c, _ in _config_classes(typing.get_args(annotation)[1])]
    return [pair for a in typing.get_args(annotation) for pair in _config_classes(a)]


def unknown_keys(node, cls: type[BaseModel], path: str = "") -> list[str]:
    """Key paths of a YAML fragment that the config class (and those nested in it) does not have."""
    if not isinstance(node, dict):
        return []
    unknown = []
    for key, value in node.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in cls.model_fields:
            unknown.append(where)
            continue
        candidates = _config_classes(cls.model_fields[key].annotation)
        if not candidates:
            continue
        results = []
        for nested, container in candidates:
            if container == "list" and isinstance(value, list):
                results.append([k for i, item in enumerate(value) for k in unknown_keys(item, nested, f"{where}[{i}]")])
            elif container == "dict" and isinstance(value, dict):
                results.append([k for name, item in value.items() for k in unknown_keys(item, nested, f"{where}.{name}")])
            elif container == "":
                results.append(unknown_keys(value, nested, where))
        unknown += min(results, key=len) if results else []
    return unknown


ROOTS = [RecapConfig, *(c for c, _ in (_config_classes(f.annotation)[0] for f in RecapConfig.model_fields.values())),
         SearchSpace]


def yaml_problems(text: str) -> list[str]:
    """Why a YAML example is not a piece of a config: unparsable, or keys no config class has."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"not YAML: {exc}"]
    if not isinstance(data, dict):
        return ["not a mapping"]
    fits = [cls for cls in ROOTS if all(k in cls.model_fields for k in data)]
    if not fits:
        return [f"top-level keys {sorted(data)} are not the keys of any config section"]
    return [f"unknown key {k} (in {fits[0].__name__})" for k in unknown_keys(data, fits[0])]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_yaml_example_is_a_config(page):
    problems = [f"block {i}: {p}" for i, block in enumerate(_blocks(page, "yaml")) for p in yaml_problems(block)]
    assert not problems, "\n".join(problems)


def test_yaml_problems_are_found():
    assert yaml_problems("model:\n  tasks:\n    ctr: {mlp_config: {layer_size: [32]}}\n")
    assert yaml_problems("no_such_section: 1\n")
    assert yaml_problems("training: [unclosed\n")
    assert not yaml_problems("model:\n  tasks:\n    ctr: {mlp_config: {layer_sizes: [32]}}\n")


def test_the_pages_have_examples():
    assert sum(len(_blocks(p, "yaml")) for p in PAGES) >= 8
    assert sum(len(_command_lines(p)) for p in PAGES) >= 40
