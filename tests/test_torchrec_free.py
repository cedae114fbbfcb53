"""The dense part of the ranker runs where torchrec and fbgemm-gpu cannot be imported (a GPU box with only a CUDA
PyTorch): in a child process whose imports of either fail, the demo config without large tables builds, trains a
step, computes the evaluator's metrics, exports a serving artifact and scores it; the dense model of the demo config
with its tables (their pooled output as an input) trains too, as `make gpu-check` does."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCK = """
import importlib.abc, sys

class NoTorchrec(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torchrec", "fbgemm_gpu"):
            raise ImportError(f"{name} is made unimportable by this test")
        return None

sys.meta_path.insert(0, NoTorchrec())
"""

SCRIPT = """
import json, sys
import torch

from common.batch import RecapBatch
from core.metrics_accumulator import MetricsAccumulator
from core.train_loop import TrainLoop  # the loop itself (its pipeline needs torchrec only when used)
from projects.home.recap.data.loader import RecapDataLoader  # dense-only data needs no KeyedJaggedTensor
from projects.home.recap.gpu_check.dense import DenseTrainer, build_dense, dense_batch, load_config
from projects.home.recap.model.factory import build_model_and_loss
from projects.home.recap.serving.export import export_serving_artifact
from projects.home.recap.serving.score_example import load_artifact

out = sys.argv[1]
result = {}

# The demo model without large tables: the whole ModelAndLoss on a RecapBatch without sparse ids.
config = load_config("demo", ["model.large_embeddings=[]"])
torch.manual_seed(0)
model_and_loss = build_model_and_loss(config)
dense = model_and_loss.model.dense
b = dense_batch(config, dense, 64, "cpu", seed=0)
batch = RecapBatch(b.continuous, b.binary, b.discrete, None, b.embeddings, b.labels, b.weights)
loss, outputs = model_and_loss(batch)
loss.backward()
result["grads"] = sum(p.grad is not None for p in model_and_loss.parameters())
result["params"] = sum(1 for p in model_and_loss.parameters() if p.requires_grad)

# The evaluator's metrics on those outputs.
accumulator = MetricsAccumulator()
labels = torch.bernoulli(outputs["calibrated_probabilities"].detach(), generator=torch.Generator().manual_seed(0))
accumulator.update(outputs["calibrated_probabilities"].detach(), labels, batch.weights,
                   request_ids=torch.arange(64) // 8)
metrics = accumulator.compute(model_and_loss.task_names, ndcg_ks=[5], request_column="request")
result["logloss"] = metrics["tasks"]["is_favorited"]["logloss"]

# Export, then score the artifact.
model = model_and_loss.model.eval()
artifact = export_serving_artifact(model, config, out, overwrite=True)
program, metadata = load_artifact(artifact)
with torch.no_grad():
    expected = model(batch)
    served = program(batch.continuous, batch.binary, batch.discrete, batch.embeddings, [], [])
result["export_difference"] = float((served["probabilities"] - expected["probabilities"]).abs().max())

# The demo's dense model with its large tables' pooled output as a plain input (what gpu-check trains).
with_tables = load_config("demo")
dense = build_dense(with_tables)
trainer = DenseTrainer(with_tables, dense, "cpu", "bf16")
b = dense_batch(with_tables, dense, 32, "cpu", seed=1)
result["pooled_width"] = dense.pooled_sparse_dim
result["dense_loss"] = float(trainer.step(b))

result["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torchrec", "fbgemm_gpu"))
print(json.dumps(result))
"""


def test_dense_model_metrics_and_export_without_torchrec(tmp_path):
    code = BLOCK + textwrap.dedent(SCRIPT)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "artifact")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["grads"] == result["params"] > 0
    assert 0 < result["logloss"] < 10
    assert result["export_difference"] < 1e-5
    assert (tmp_path / "artifact" / "model.pt2").exists()
    assert result["pooled_width"] == 16 + 16 + 8  # the demo's user, author and hashtag tables
    assert result["dense_loss"] > 0


def test_the_block_really_blocks():
    code = BLOCK + "import torchrec"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "made unimportable by this test" in done.stderr
