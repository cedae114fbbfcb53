"""The temporary parquet data in a config's schema (what `recap benchmark` and `recap data benchmark` read): every
column the loader reads, history groups included."""

from projects.home.recap.benchmarks.config_benchmark import CONFIG_DIR
from projects.home.recap.benchmarks.schema_data import write_schema_parquet
from projects.home.recap.data.config import DatasetConfig
from projects.home.recap.data.loader import RecapDataLoader
from projects.home.recap.schema import load_recap_config


def test_schema_parquet_is_read_by_the_loader(tmp_path):
    config = load_recap_config(CONFIG_DIR / "demo.yaml")
    path = write_schema_parquet(config, tmp_path / "train" / "part-00000.parquet", rows=300, row_group_rows=128)
    data = config.data.model_copy(update={"train": DatasetConfig(paths=[str(path.parent)])})
    tasks = list(config.model.tasks)
    loader = RecapDataLoader(data, data.train, tasks, "eval", batch_size=128, num_workers=0)
    batches = list(loader)
    assert [b.batch_size for b in batches] == [128, 128, 44]
    f = config.data.features
    batch = batches[0]
    assert batch.continuous.shape == (128, f.num_continuous) and batch.binary.shape == (128, f.num_binary)
    assert batch.discrete.shape == (128, f.num_discrete)
    assert batch.embeddings.shape == (128, sum(e.dim for e in f.embeddings))
    assert batch.labels.shape == (128, len(tasks)) and set(batch.labels.unique().tolist()) <= {0.0, 1.0}
    assert batch.sparse.keys() == list(f.sparse)


def test_schema_writer_fills_history_groups(tmp_path):
    config = load_recap_config(CONFIG_DIR / "demo_history.yaml", ["data.features.sequences.history.max_length=7"])
    path = write_schema_parquet(config, tmp_path / "train" / "part.parquet", 40)
    loader = RecapDataLoader(config.data, DatasetConfig(paths=[str(path)]), list(config.model.tasks), "eval",
                             batch_size=10)
    batch = next(iter(loader))
    group = batch.sequences["history"]
    assert group["lengths"].tolist() == [7] * 10 and group["id:history.author_id"].shape == (70,)
    assert group["continuous"].shape == (70, 1) and group["candidate:history.hashtag"].shape == (10,)
