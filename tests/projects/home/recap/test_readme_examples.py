"""Every command shown in README.md's "Configuring an experiment" section runs as written (demo.yaml being the
shipped projects/home/recap/config/demo.yaml, its data a small generated set)."""

import re
import shlex
from pathlib import Path

import pytest

from projects.home.recap.data.synthetic import generate
from projects.home.recap.main import main

REPO = Path(__file__).resolve().parents[4]
CONFIGS = REPO / "projects/home/recap/config"


def _section_commands(title: str) -> list[str]:
    """The `recap` commands of the bash blocks in one README section, continuation lines joined, comments cut."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


COMMANDS = _section_commands("Configuring an experiment")


def test_the_section_has_examples():
    assert len(COMMANDS) >= 3 and all(c.startswith(".venv/bin/recap ") for c in COMMANDS)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo_data")
    generate(directory, 300, seed=3, rows_per_file=300, row_group_size=100)
    return directory


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command, demo_data, monkeypatch, capsys):
    monkeypatch.setenv("RECAP_DATA_DIR", str(demo_data))
    monkeypatch.chdir(REPO)
    argv = shlex.split(command)[1:]
    # The README writes the shipped config's path once, then its name.
    argv = [str(CONFIGS / a) if a.endswith(".yaml") and not Path(a).exists() else a for a in argv]
    assert main(argv) == 0, capsys.readouterr().err
