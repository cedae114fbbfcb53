"""The serving artifact's layout: its format version, its files and outputs, and the error an export stops with.

The artifact directory holds
  model.pt2          the ServingRanker exported with torch.export (dynamic batch size and number of ids),
                     loaded with torch.export.load(path).module(); metadata.json is embedded in it too;
  metadata.json      tasks in output order, the input layout (columns per input tensor, sparse feature order),
                     the id transforms, calibration rates and the versions it was exported with (metadata.py);
  README.md          how to score, for this model (artifact_readme.py);
  score_example.py   a standalone scorer of parquet files (torch, numpy and pyarrow only);
  list_checks.py     the training loader's checks of list columns, which score_example.py reads its inputs with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from projects.home.recap.model.multi_task import MultiTaskRankingModel

# 2: histories one per request, with request_of_row (1: one history per row, no request_of_row).
FORMAT = "recap-serving/2"
MODEL_FILE = "model.pt2"
METADATA_FILE = "metadata.json"
README_FILE = "README.md"
SCRIPT_FILE = "score_example.py"
# The loader's own module, shipped rather than copied into the script: the scorer reads lists as training does.
CHECKS_FILE = "list_checks.py"
ARTIFACT_FILES = (MODEL_FILE, METADATA_FILE, README_FILE, SCRIPT_FILE, CHECKS_FILE)
OUTPUTS = ("logits", "probabilities", "calibrated_probabilities")
SCORE = "score"  # [batch], with model.scoring


class ExportError(RuntimeError):
    """The model or the output directory cannot be exported / written; the message says what and where."""


def served_outputs(model: MultiTaskRankingModel) -> tuple[str, ...]:
    """The outputs the artifact documents and checks: the per-task ones, and the score when the model has one."""
    return OUTPUTS + ((SCORE,) if model.dense.has_score else ())
