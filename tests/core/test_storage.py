"""core/storage.py without a server: which strings are URLs, which schemes are accepted, and the config's and the
commands' validation."""

import argparse
import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from core import storage
from core.config import ConfigError, load_config
from core.storage import check_location, location, url_scheme
from core.train_config import TrainingConfig

HAVE_S3FS = importlib.util.find_spec("s3fs") is not None


@pytest.mark.parametrize("value, scheme", [
    ("runs/ml", None), ("/abs/runs", None), ("C:/runs", None), ("runs:v1", None), ("s3://b/k", "s3"),
    ("S3://b/k", "s3"), ("gs://b", "gs"), ("s3:/b/k", "s3"), ("file:///tmp/x", "file"), ("ftp://h/x", "ftp"),
])
def test_url_scheme(value, scheme):
    assert url_scheme(value) == scheme


@pytest.mark.parametrize("value", ["runs/ml", "/abs/runs", "runs:v1", "./x"])
def test_local_paths_are_accepted_unchanged(value):
    assert check_location(value) == value
    assert location(value) == Path(value)


def test_file_urls_are_local_paths():
    assert check_location("file:///tmp/run") == "/tmp/run"
    assert location("file:///tmp/run") == Path("/tmp/run")


@pytest.mark.parametrize("value, message", [
    ("ftp://host/runs", "unsupported URL scheme ftp://"),
    ("hdfs://nn/runs", "unsupported URL scheme hdfs://"),
    ("memory://runs", "unsupported URL scheme memory://"),
    ("s3:/runs/ml", "two slashes"),  # what pathlib makes of s3://runs/ml
    ("s3://", "names no bucket"),
    ("", "empty location"),
])
def test_bad_locations_are_errors_naming_the_value(value, message):
    with pytest.raises(ValueError, match=message) as err:
        check_location(value)
    assert value in str(err.value)


def test_a_scheme_without_its_package_says_which_extra_installs_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gcsfs" else real(name))
    with pytest.raises(ValueError, match=r"gs://b/run: gs:// needs the gcsfs package .*recap-ranker\[gcs\]"):
        check_location("gs://b/run")


def test_a_mangled_url_in_a_path_is_refused():
    with pytest.raises(ValueError, match="two slashes"):
        location(Path("s3://runs/ml"))  # Path collapses it to s3:/runs/ml


def _training(**kwargs):
    return {"save_dir": "runs/x", "num_train_steps": 1, **kwargs}


@pytest.mark.parametrize("field", ["save_dir", "warm_start_from"])
@pytest.mark.parametrize("value", ["s3:/runs/ml", "ftp://h/runs", "memory://x"])
def test_training_locations_are_validated(field, value):
    with pytest.raises(ValidationError, match=field):
        TrainingConfig(**_training(**{field: value}))


def test_config_file_error_names_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("save_dir: s3:/runs/ml\nnum_train_steps: 1\n")
    with pytest.raises(ConfigError, match=r"save_dir: .*s3:/runs/ml: a URL needs two slashes"):
        load_config(path, TrainingConfig)


@pytest.mark.skipif(not HAVE_S3FS, reason="s3fs is not installed")
def test_s3_save_dir_is_kept_as_a_url():
    assert TrainingConfig(**_training(save_dir="s3://runs/ml")).save_dir == "s3://runs/ml"


@pytest.mark.parametrize("command, argv", [
    ("predict", ["--run", "runs/x", "--input", "a.parquet", "--output", "ftp://h/out"]),
    ("predict", ["--run", "s3:/runs/x", "--input", "a.parquet", "--output", "out"]),
    ("export", ["--run", "runs/x", "--output", "s3:/b/export"]),
    ("evaluate", ["--run", "gopher://x/y"]),
    ("data generate", ["--output", "ftp://h/data"]),
    ("data census", ["--input", "x", "--output", "ftp://h/data"]),
    ("data downsample", ["--input", "x", "--output", "s3:/b/x", "--keep", "0.5"]),
    ("data prepare", ["src", "ftp://h/dst"]),
    ("tune", ["--config", "c.yaml", "--space", "s.yaml", "--output", "s3://b/tune"]),
    ("benchmark", ["--output", "s3://b/bench.json"]),
])
def test_command_outputs_are_validated(command, argv, capsys):
    import importlib

    from projects.home.recap.main import COMMANDS, command_parser

    parser = command_parser(command, importlib.import_module(f"projects.home.recap.commands.{COMMANDS[command][0]}"))
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "URL" in error or "scheme" in error or "slashes" in error, error


def test_local_only_outputs_refuse_urls():
    with pytest.raises(argparse.ArgumentTypeError, match="only to a local path"):
        storage.local_path_argument("s3://b/x")
    assert storage.local_path_argument("runs/x") == "runs/x"
