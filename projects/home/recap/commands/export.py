"""`recap export --config FILE --checkpoint PATH --output DIR`: write a self-contained serving artifact."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from core.checkpoint import CheckpointError
from core.log import get_logger
from core.object_path import ObjectPath
from core.progress import Phases
from core.storage import is_remote, location, location_argument
from core.storage_ops import upload_tree
from core.storage_retries import StorageError
from projects.home.recap.commands.run_source import add_source_arguments, checkpoint_of, load_source_config
from projects.home.recap.serving.artifact import ExportError

logger = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, "checkpoint directory to export, or a run's save_dir (its latest); required "
                                 "with --config")
    parser.add_argument("--output", required=True, type=location_argument, help="artifact directory to write (model.pt2, metadata.json, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing artifact in --output")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (repeatable), e.g. --set data.tasks.fav.neg_rate=0.1")


def run(args: argparse.Namespace) -> int:
    from projects.home.recap.inference import load_for_inference
    from projects.home.recap.serving.export import PHASES, check_output_dir, export_serving_artifact

    config = load_source_config(args)
    checkpoint = checkpoint_of(args)
    try:
        # Checked before the checkpoint is read, which can take long for large tables.
        remote = is_remote(args.output)
        if remote:
            check_remote_output(location(args.output), args.overwrite)
        else:
            check_output_dir(args.output, args.overwrite)
        # Loading, the export's own phases and, to an object store, the upload.
        with Phases("export", total=1 + PHASES + int(remote)) as phases:
            with phases.phase(f"loading the checkpoint {checkpoint}"):
                model_and_loss = load_for_inference(config, checkpoint)
            if remote:
                path = export_to_store(model_and_loss.model, config, location(args.output), str(checkpoint),
                                       phases)
            else:
                path = export_serving_artifact(model_and_loss.model, config, args.output,
                                               overwrite=args.overwrite, source=str(checkpoint), phases=phases)
    except (ExportError, CheckpointError, StorageError) as exc:
        print(f"recap export: {exc}", file=sys.stderr)
        return 1
    logger.info("wrote the serving artifact of %s to %s", checkpoint, path)
    print(path)
    return 0


def check_remote_output(target: ObjectPath, overwrite: bool) -> None:
    """check_output_dir for an object-store prefix: empty, or (with overwrite) holding only an artifact's files."""
    from projects.home.recap.serving.artifact import ARTIFACT_FILES

    present = {p.name for p in target.iterdir()}
    if present and not overwrite:
        raise ExportError(f"output {target} is not empty; choose another or pass --overwrite")
    foreign = sorted(present - set(ARTIFACT_FILES))
    if foreign:
        raise ExportError(f"output {target} holds files that are not a serving artifact: {foreign[:5]}")


def export_to_store(model, config, target: ObjectPath, source: str, phases: Phases | None = None) -> ObjectPath:
    """Export into a local temporary directory, then upload the finished artifact to `target` (its files replace
    an earlier artifact's, which check_remote_output allowed)."""
    from projects.home.recap.serving.export import export_serving_artifact

    phases = phases if phases is not None else Phases("export", enabled=False)
    with tempfile.TemporaryDirectory(prefix="recap-export-") as local:
        artifact = export_serving_artifact(model, config, Path(local) / "artifact", source=source, phases=phases)
        with phases.phase(f"uploading the artifact to {target}"):
            upload_tree(artifact, target)
    return target
