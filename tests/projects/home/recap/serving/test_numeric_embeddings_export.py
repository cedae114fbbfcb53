"""A model with model.numeric_embeddings exports for serving: the artifact carries the bin boundaries and scores as
the trained model does, NaN and inf values included."""

import json

import torch

from projects.home.recap.model.synthetic_batch import random_batch
from projects.home.recap.serving.export import export_serving_artifact
from projects.home.recap.serving.serving_model import serving_inputs

FEATURES = ["user_id", "author_id", "hashtags"]


def test_exported_numeric_embeddings_match_the_model(make_config, train, tmp_path):
    # counts (5 slots) then ratio; random_batch draws values around 0 with NaN and inf among them.
    boundaries = [[-1.0, 0.0, 1.0], [-2.0, -0.5, 0.0, 0.5, 2.0], [0.0, 1.0], [-1.0, 1.0], [-0.3, 0.0, 0.3], [0.0, 3.0]]
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"columns": ["counts", "ratio"], "widths": [5, 1], "boundaries": boundaries}))
    config = make_config([f"model.numeric_embeddings={{stats_path: {stats}, embedding_dim: 3, max_bins: 3}}"])
    model = train(config, steps=3)
    assert model.dense.numeric_embeddings.output_dim == 18
    artifact = export_serving_artifact(model, config, tmp_path / "artifact")
    program = torch.export.load(artifact / "model.pt2")
    assert any(name.endswith("numeric_embeddings.encoding.lower") for name in program.state_dict)
    module = program.module()
    g = torch.Generator().manual_seed(3)
    for size in (1, 7, 33):
        batch = random_batch(config, size, g)
        batch.continuous[0, 0] = float("inf")
        batch.continuous[-1, 5] = float("nan")
        with torch.no_grad():
            expected = model(batch)
            got = module(*serving_inputs(batch, FEATURES))
        for key in ("logits", "probabilities", "calibrated_probabilities"):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5, msg=f"batch {size}: {key}")

