"""core/storage.py without a server: which strings are URLs, which schemes are accepted, the config's and the
commands' validation, retries of transient errors and the one-line error messages."""

import argparse
import errno
import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from core import storage
from core.config import ConfigError, load_config
from core.storage import ObjectPath, check_location, location, url_scheme
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


@pytest.mark.skipif(not HAVE_S3FS, reason="s3fs is not installed")
def test_s3_urls_are_object_paths():
    path = location("s3://bucket/runs/ml")
    assert isinstance(path, ObjectPath)
    assert str(path / "checkpoints" / "step_1") == "s3://bucket/runs/ml/checkpoints/step_1"
    assert (path / "a").name == "a" and (path / "a").parent == path
    assert str(path.with_name("other")) == "s3://bucket/runs/other"


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


# --- retries and errors ----------------------------------------------------------------------------------------------
def test_a_transient_error_is_retried_with_backoff_and_logged(monkeypatch, caplog):
    monkeypatch.setattr(storage, "BACKOFF_SECONDS", 0.001)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EBUSY, "SlowDown: please reduce your request rate")  # s3fs's 503
        return "ok"

    assert storage.retrying("writing", "s3://b/k", flaky) == "ok"
    assert len(calls) == 3
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "s3://b/k" in retries[0] and "SlowDown" in retries[0]


def test_a_persistent_transient_error_gives_up(monkeypatch):
    monkeypatch.setattr(storage, "BACKOFF_SECONDS", 0.001)
    calls = []

    def down():
        calls.append(1)
        raise ConnectionError("connection reset")

    with pytest.raises(storage.StorageError, match=r"^s3://b/k: writing failed after 5 attempts"):
        storage.retrying("writing", "s3://b/k", down)
    assert len(calls) == storage.ATTEMPTS


def test_a_permanent_error_is_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError("Access Denied")

    with pytest.raises(storage.StorageError, match=r"s3://b/k: reading failed: access denied"):
        storage.retrying("reading", "s3://b/k", denied)
    assert len(calls) == 1


def test_a_missing_file_stays_file_not_found():
    def missing():
        raise FileNotFoundError("b/k")

    with pytest.raises(FileNotFoundError):
        storage.retrying("reading", "s3://b/k", missing)


def test_staged_output_is_the_output_itself_when_local(tmp_path):
    with storage.staged_output(tmp_path / "out") as staging:
        assert staging == tmp_path / "out"
