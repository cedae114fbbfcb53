"""The plain DIN peer (baselines/history_din.py) trains and scores on the generator's history data."""

import json

from projects.home.recap.baselines.history_din import main
from projects.home.recap.baselines.history_peers import TASKS
from projects.home.recap.data.synthetic import SyntheticSpec, generate


def test_the_din_peer_trains_and_reports_every_task(tmp_path):
    generate(tmp_path / "data", 3_000, spec=SyntheticSpec(history_length=8))
    out = tmp_path / "din.json"
    assert main(["--data", str(tmp_path / "data"), "--steps", "30", "--batch-size", "64",
                 "--output", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert list(doc["tasks"]) == TASKS and doc["steps"] == 30 and doc["position_debias"] is True
    rates = [t["positive_rate"] for t in doc["tasks"].values()]
    assert all(0 <= r < 1 for r in rates)
    frequent = [t for t in doc["tasks"].values() if t["positive_rate"] >= 0.01]
    assert frequent and all(0 <= t["auc"] <= 1 for t in frequent)
    assert doc["mean_rce_frequent"] == sum(t["rce"] for t in frequent) / len(frequent)
