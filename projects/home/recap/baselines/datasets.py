"""The data sets of `recap benchmark baselines`: the config our model trains from by default, and how each data set is
made when its directory holds none."""

from __future__ import annotations

import time
from pathlib import Path

from core.log import get_logger
from projects.home.recap.baselines.small_data import MANIFEST, generate_small, read_manifest
from projects.home.recap.benchmarks.ids.run import has_data
from projects.home.recap.data.census import convert_census

logger = get_logger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
DEFAULT_CONFIGS = {"small": CONFIG_DIR / "small.yaml", "census": CONFIG_DIR / "census.yaml"}
DEFAULT_DATA_DIRS = {"small": Path("data/small"), "census": Path("data/census")}
DEFAULT_CENSUS_INPUT = Path("../shared/data/census-income-kdd/census-income.test.gz")


def ensure_small(data_dir: Path, rows: int, seed: int) -> dict:
    """Generate the small data into data_dir unless it already holds these rows from this seed; what is there."""
    manifest = read_manifest(data_dir)
    if has_data(data_dir) and manifest is None:
        # Someone else's splits: generating would write its files among them.
        raise SystemExit(f"{data_dir} holds parquet splits that `recap data generate-small` did not write (no "
                         f"{MANIFEST}): pass --small-dir a new or empty directory for the small data")
    if has_data(data_dir) and manifest and manifest.get("rows") == rows and manifest.get("seed") == seed:
        logger.info("using the existing small data in %s (%d rows, seed %d)", data_dir, rows, seed)
        return {"rows": manifest["splits"], "seed": seed, "generated": False}
    logger.info("generating %d rows of small data (seed %d) in %s", rows, seed, data_dir)
    start = time.perf_counter()
    sizes = generate_small(data_dir, rows, seed)
    return {"rows": sizes, "seed": seed, "generated": True, "seconds": round(time.perf_counter() - start, 1)}


def ensure_census(data_dir: Path, source: Path) -> dict:
    """Convert the census file into data_dir unless its splits are there; what is there."""
    if has_data(data_dir):
        logger.info("using the existing census data in %s", data_dir)
        return {"source": None, "generated": False}
    if not source.is_file():
        raise SystemExit(f"{data_dir} holds no census splits and the census file {source} does not exist: "
                         f"pass --census-input (census-income.data or .test, gzipped or not)")
    logger.info("converting %s into %s", source, data_dir)
    sizes = convert_census(source, data_dir)
    return {"rows": sizes, "source": str(source), "generated": True}
