"""Option parsing of every `recap` command, and of the torchrun launch that forwards a command to its workers:
options are matched in full, never by prefix."""

import importlib

import pytest

from core.distributed import launcher_arguments, parse_launcher_arguments
from projects.home.recap import main as cli
from projects.home.recap.commands import evaluate, predict

MODULE = "projects.home.recap.main"


def _parser(name):
    return cli.command_parser(name, importlib.import_module(f"projects.home.recap.commands.{cli.COMMANDS[name][0]}"))


def test_an_abbreviated_option_is_unknown(capsys, tmp_path):
    with pytest.raises(SystemExit):
        _parser("evaluate").parse_args(["--run", str(tmp_path), "--datase", "valid"])
    assert "unrecognized arguments: --datase" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_parser_refuses_prefixes(name):
    assert _parser(name).allow_abbrev is False


@pytest.mark.parametrize("command", [evaluate, predict])
def test_run_reaches_the_workers_of_nproc_per_node(command, tmp_path):
    name = command.__name__.rsplit(".", 1)[1]
    argv = ["--run", str(tmp_path), "--nproc-per-node", "2"]
    if name == "predict":
        argv += ["--input", "a.parquet", "--output", str(tmp_path / "out")]
    args = _parser(name).parse_args(argv)
    worker_argv = command.worker_arguments(args)
    launched = parse_launcher_arguments(launcher_arguments(2, MODULE, worker_argv))
    assert launched.training_script == MODULE
    assert launched.training_script_args == worker_argv
    # What a worker then parses: the same run directory.
    assert _parser(name).parse_args(worker_argv[1:]).run == str(tmp_path)


def test_a_separator_before_the_command_is_accepted(capsys):
    # `torchrun ... -m projects.home.recap.main -- evaluate --run DIR` keeps torchrun's parser off the options.
    with pytest.raises(SystemExit) as exc:
        cli.main(["--", "validate-config", "--help"])
    assert exc.value.code == 0
    assert "usage: recap validate-config" in capsys.readouterr().out
