"""The generator's collaborative signal: off by default (today's data unchanged), hidden from every column when on,
and a real part of the ground truth that only id interactions can capture."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from core.metrics import auc
from projects.home.recap.data.collaborative import COLLABORATIVE_LOADINGS, make_collaborative
from projects.home.recap.data.synthetic import (
    LABEL_PREFIX,
    LOADINGS,
    ORACLE_PREFIX,
    TASK_RATES,
    SyntheticSpec,
    generate,
    generate_table,
    make_world,
)
from projects.home.recap.data.synthetic.rows import _draw
from projects.home.recap.data.synthetic.sampling import _rng, _sigmoid
from projects.home.recap.main import main

ON = SyntheticSpec(collaborative_dim=4, collaborative_strength=1.0)
INTEGER_COLUMNS = ("impression_id", "client_id", "hour_of_day", "user_id", "author_id", "hashtags")
# The default generator's output for seed 11 before the collaborative signal existed: a digest of the columns drawn
# as integers (exact on any machine) and each task's mean oracle probability (float sums may differ in the last
# bits between CPUs; any change to the draws moves them by far more than the tolerance).
INTEGER_DIGEST = "01e97128b0d430e80689094a85528058c489a2a653e76c61a73b91dee07a4f60"
ORACLE_MEANS = [0.0996261, 0.0203167, 0.0086984, 0.0026259, 0.0615289, 0.0301028, 0.0512993, 0.0045202, 0.0019944,
                0.000991]


def integer_digest(table: pa.Table) -> str:
    digest = hashlib.sha256()
    for name in INTEGER_COLUMNS:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type):
            digest.update(np.asarray(column.offsets).tobytes())
            column = column.flatten()
        digest.update(np.asarray(column).tobytes())
    return digest.hexdigest()


def test_off_by_default_leaves_the_data_unchanged():
    # One candidate per request draws exactly what the generator drew before requests existed.
    assert SyntheticSpec().collaborative_dim == 0
    world = make_world(SyntheticSpec(candidates_per_request=1), 11)
    assert world.collaborative is None
    table = generate_table(world, _rng(11, 3, 0, 0), 3000, 0)
    assert integer_digest(table) == INTEGER_DIGEST
    means = [table.column(ORACLE_PREFIX + LABEL_PREFIX + t).to_numpy().astype(np.float64).mean() for t, _ in TASK_RATES]
    assert means == pytest.approx(ORACLE_MEANS, rel=1e-5, abs=1e-7)


def test_strength_without_dimensions_changes_nothing(tmp_path):
    def files(name, spec):
        generate(tmp_path / name, 2_000, seed=2, spec=spec, rows_per_file=1_000)
        return [p.read_bytes() for p in sorted((tmp_path / name).rglob("*.parquet"))]

    assert files("default", SyntheticSpec()) == files("strength", SyntheticSpec(collaborative_strength=3.0))


def test_every_task_has_a_loading_and_negative_tasks_load_negatively():
    assert set(COLLABORATIVE_LOADINGS) == set(LOADINGS)
    for task in ("is_negative_feedback", "is_report_tweet_clicked"):
        assert COLLABORATIVE_LOADINGS[task] < 0
    assert all(v > 0 for t, v in COLLABORATIVE_LOADINGS.items() if "negative" not in t and "report" not in t)


def test_hidden_vectors_and_their_scale():
    signal = make_collaborative(5_000, 3_000, 8, 1.5, ["is_favorited", "is_report_tweet_clicked"], seed=1)
    assert signal.user.shape == (5_000, 8) and signal.author.shape == (3_000, 8)
    rng = np.random.default_rng(0)
    interaction = signal.interaction(rng.integers(0, 5_000, 50_000), rng.integers(0, 3_000, 50_000))
    assert interaction.std() == pytest.approx(1.5, rel=0.05) and abs(interaction.mean()) < 0.05
    assert signal.logits(np.array([2.0], dtype=np.float32))[:, 0].tolist() == pytest.approx([2.0, -1.2])
    assert make_collaborative(10, 10, 0, 1.0, ["unknown task"], seed=1) is None
    with pytest.raises(ValueError, match="unknown task"):
        make_collaborative(10, 10, 2, 1.0, ["unknown task"], seed=1)
    with pytest.raises(ValueError, match="collaborative_dim"):
        make_collaborative(10, 10, -1, 1.0, ["is_favorited"], seed=1)


@pytest.fixture(scope="module")
def draws():
    """The same 40,000 rows drawn without and with the signal (seed 7)."""
    off, on = make_world(SyntheticSpec(), 7), make_world(ON, 7)
    return off, on, _draw(off, _rng(7, 9), 40_000), _draw(on, _rng(7, 9), 40_000)


def test_no_column_carries_the_signal(draws):
    # Switching the signal on draws every feature exactly as before: no column, the upstream user and author
    # embeddings included, can tell a model anything about the hidden vectors.
    _, _, off, on = draws
    assert off["collaborative"] is None and on["collaborative"] is not None
    for key in off:
        if key in ("logits", "collaborative"):
            continue
        for a, b in zip(off[key], on[key]) if key == "embeddings" else [(off[key], on[key])]:
            assert np.array_equal(a, b, equal_nan=True), key


def test_the_signal_moves_the_oracle_and_only_ids_can_reach_it(draws):
    world_off, world_on, off, on = draws
    rows = np.arange(40_000)
    labels_rng = np.random.default_rng(3)
    for j, task in enumerate(world_on.task_names):
        p_on = _sigmoid(on["logits"][j] + world_on.task_bias[j])
        rate = dict(TASK_RATES)[task]
        assert abs(p_on.mean() - rate) < 0.25 * rate, task  # the biases are solved with the signal in
        correlation = np.corrcoef(on["logits"][j], on["collaborative"])[0, 1]
        assert np.sign(correlation) == np.sign(COLLABORATIVE_LOADINGS[task]) and abs(correlation) > 0.2, task
        if rate < 0.05:
            continue
        y = labels_rng.random(len(rows)) < p_on
        p_off = _sigmoid(off["logits"][j] + world_off.task_bias[j])
        # The best a model without the hidden vectors can do is rank by everything else: the logit without the
        # signal. The oracle, which has it, ranks clearly better.
        assert auc(p_on, y) > auc(p_off, y) + 0.01, task


def test_oracle_auc_rises_with_the_signal():
    def oracle_auc(spec: SyntheticSpec) -> float:
        table = generate_table(make_world(spec, 5), _rng(5, 8), 40_000, 0)
        column = LABEL_PREFIX + "is_favorited"
        return auc(table.column(ORACLE_PREFIX + column).to_numpy(), table.column(column).to_numpy())

    weak, strong = (oracle_auc(SyntheticSpec(collaborative_dim=4, collaborative_strength=s)) for s in (0.3, 1.5))
    assert oracle_auc(SyntheticSpec()) < weak < strong


def test_command_writes_collaborative_data(tmp_path, capsys):
    assert main(["data", "generate", "--output", str(tmp_path), "--rows", "3000", "--collaborative-dim", "4",
                 "--processes", "1"]) == 0
    assert "rows/s" in capsys.readouterr().out
    table = ds.dataset(tmp_path / "train").to_table()
    assert table.num_rows == 2700 and ORACLE_PREFIX + LABEL_PREFIX + "is_favorited" in table.column_names
    with pytest.raises(SystemExit, match="collaborative"):
        main(["data", "generate", "--output", str(tmp_path), "--collaborative-dim", "-1"])
