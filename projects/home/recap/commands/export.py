"""`recap export --config FILE --checkpoint PATH --output DIR`: write a self-contained serving artifact."""

from __future__ import annotations

import argparse
import sys

from core.checkpoint import CheckpointError
from core.log import get_logger
from core.storage import location_argument
from projects.home.recap.commands.run_source import add_source_arguments, checkpoint_of, load_source_config

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
    from projects.home.recap.serving.export import ExportError, check_output_dir, export_serving_artifact

    config = load_source_config(args)
    checkpoint = checkpoint_of(args)
    try:
        # Checked before the checkpoint is read, which can take long for large tables.
        check_output_dir(args.output, args.overwrite)
        model_and_loss = load_for_inference(config, checkpoint)
        path = export_serving_artifact(
            model_and_loss.model, config, args.output, overwrite=args.overwrite, source=str(checkpoint)
        )
    except (ExportError, CheckpointError) as exc:
        print(f"recap export: {exc}", file=sys.stderr)
        return 1
    logger.info("wrote the serving artifact of %s to %s", checkpoint, path)
    print(path)
    return 0
