"""`recap export --config FILE --checkpoint PATH --output DIR` loads the checkpoint through
projects.home.recap.inference.load_for_inference and writes the artifact, reporting its slow phases; bad outputs
fail before loading."""

import json
import logging
import re
import sys
import types

import pytest

from core.config import dump_yaml
from projects.home.recap.main import main
from projects.home.recap.model.loss import ModelAndLoss


@pytest.fixture
def loader(model, monkeypatch):
    """A stand-in inference module returning the trained model, recording what it was asked to load."""
    calls = []

    def load_for_inference(config, checkpoint):
        calls.append((config, checkpoint))
        return ModelAndLoss(model, pos_weight=[1.0] * 3, loss_weight=[1.0] * 3)

    monkeypatch.setitem(
        sys.modules, "projects.home.recap.inference", types.SimpleNamespace(load_for_inference=load_for_inference)
    )
    return calls


@pytest.fixture
def config_file(config, tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(dump_yaml(config))
    return path


def test_export_command_writes_the_artifact(loader, config, config_file, tmp_path, capsys):
    out = tmp_path / "serving"
    argv = ["export", "--config", str(config_file), "--checkpoint", "runs/a/checkpoints/step_8", "--output", str(out)]
    assert main(argv) == 0
    [(loaded_config, checkpoint)] = loader
    assert loaded_config == config and checkpoint == "runs/a/checkpoints/step_8"
    assert capsys.readouterr().out.strip() == str(out)
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["source_checkpoint"] == "runs/a/checkpoints/step_8"
    assert metadata["tasks"] == ["fav", "report", "reply"]
    # A second export needs --overwrite.
    assert main(argv) == 1
    assert "is not empty; choose another or pass --overwrite" in capsys.readouterr().err


def test_unwritable_output_fails_before_loading(loader, config_file, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv = ["export", "--config", str(config_file), "--checkpoint", "ckpt", "--output", str(tmp_path / "file" / "x")]
    assert main(argv) == 1
    assert "recap export: output directory" in capsys.readouterr().err
    assert loader == []


def test_the_slow_phases_are_logged_with_their_seconds_when_not_on_a_terminal(loader, config_file, tmp_path,
                                                                              monkeypatch, caplog):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO)
    out = tmp_path / "serving"
    assert main(["export", "--config", str(config_file), "--checkpoint", "ckpt", "--output", str(out)]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "core.progress"]
    phases = ["loading the checkpoint ckpt", "tracing the serving model with torch.export",
              "checking the exported program against the model", f"saving the artifact to {out}"]
    assert len(lines) == 2 * len(phases)
    for i, name in enumerate(phases):
        label = f"export [{i + 1}/4] {name}"
        assert lines[2 * i] == f"{label} ..."
        assert re.fullmatch(re.escape(label) + r": done in \d+\.\d s", lines[2 * i + 1]), lines[2 * i + 1]
