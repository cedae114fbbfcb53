"""Export a trained MultiTaskRankingModel to a self-contained serving artifact (torch.export), scored with torch only.

The steps, each in its module: the checks and the ServingRanker sharing the model's tables (build.py), the example
inputs it is traced with and the check of the program against the eager model (tracing.py), metadata.json
(metadata.py) and README.md (artifact_readme.py); the artifact's files are listed in artifact.py. It is written to
a temporary sibling directory and renamed into place, so a failed export leaves nothing half-written. The slow
phases (tracing, the check, saving) report through core.progress.Phases.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.progress import Phases
from projects.home.recap.data import list_checks
from projects.home.recap.model.multi_task import MultiTaskRankingModel
from projects.home.recap.schema import RecapConfig
from projects.home.recap.serving.artifact import (
    ARTIFACT_FILES,
    CHECKS_FILE,
    METADATA_FILE,
    MODEL_FILE,
    README_FILE,
    SCRIPT_FILE,
    ExportError,
)
from projects.home.recap.serving.artifact_readme import artifact_readme
from projects.home.recap.serving.build import build_serving_model
from projects.home.recap.serving.metadata import check_config, serving_metadata
from projects.home.recap.serving.tracing import check_agreement, dynamic_shapes, example_inputs

# The phases export_serving_artifact reports (a caller adds its own, such as loading the checkpoint, to the total).
PHASES = 3


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """The resolved output directory, after checking it can be written (before any expensive work)."""
    target = Path(output_dir).expanduser().resolve()
    if target.exists():
        if not target.is_dir():
            raise ExportError(f"output {target} exists and is not a directory")
        present = {p.name for p in target.iterdir()}
        if present and not overwrite:
            raise ExportError(f"output directory {target} is not empty; choose another or pass --overwrite")
        foreign = sorted(present - set(ARTIFACT_FILES))
        if foreign:
            # Never delete files that are not ours, even with overwrite.
            raise ExportError(f"output directory {target} holds files that are not a serving artifact: {foreign[:5]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{target.name}.probe-", dir=target.parent)
        os.rmdir(probe)
    except OSError as exc:
        raise ExportError(f"output directory {target} cannot be written: {exc.strerror or exc}") from None
    return target


def export_serving_artifact(
    model: MultiTaskRankingModel,
    config: RecapConfig,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    source: str | None = None,
    phases: Phases | None = None,
) -> Path:
    """Export an unsharded CPU model (tables materialized) to output_dir; returns the artifact directory.
    phases: where the PHASES slow steps report (default: nowhere)."""
    phases = phases if phases is not None else Phases("export", enabled=False)
    serving = build_serving_model(model)
    check_config(model, config)
    target = check_output_dir(output_dir, overwrite)
    features = serving.features
    metadata = serving_metadata(model, config, features, source)
    inputs = example_inputs(config, features)
    was_training = model.training
    model.eval()
    serving.eval()
    try:
        history_inputs = list(inputs[6]) if len(inputs) > 6 else None
        with phases.phase("tracing the serving model with torch.export"):
            program = torch.export.export(serving, inputs,
                                          dynamic_shapes=dynamic_shapes(len(features), history_inputs))
        with phases.phase("checking the exported program against the model"):
            check_agreement(model, program.module(), inputs, features)
    finally:
        model.train(was_training)
    with phases.phase(f"saving the artifact to {target}"):
        _write(program, metadata, target)
    return target


def _write(program: torch.export.ExportedProgram, metadata: dict[str, Any], target: Path) -> None:
    """The artifact's files, written to a temporary sibling of target and renamed into place (replacing an earlier
    artifact there)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        metadata_text = json.dumps(metadata, indent=2) + "\n"
        torch.export.save(program, staging / MODEL_FILE, extra_files={METADATA_FILE: metadata_text})
        (staging / METADATA_FILE).write_text(metadata_text)
        (staging / README_FILE).write_text(artifact_readme(metadata))
        shutil.copyfile(Path(__file__).with_name(SCRIPT_FILE), staging / SCRIPT_FILE)
        shutil.copyfile(Path(list_checks.__file__), staging / CHECKS_FILE)
        os.chmod(staging, 0o755)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"writing the artifact to {target} failed: {exc}") from None
