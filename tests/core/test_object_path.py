"""core/object_path.py without a server: an object-store URL's path arithmetic (its store operations are in
test_storage_s3.py)."""

import importlib.util

import pytest

from core.object_path import ObjectPath
from core.storage import location

HAVE_S3FS = importlib.util.find_spec("s3fs") is not None


@pytest.mark.skipif(not HAVE_S3FS, reason="s3fs is not installed")
def test_s3_urls_are_object_paths():
    path = location("s3://bucket/runs/ml")
    assert isinstance(path, ObjectPath)
    assert str(path / "checkpoints" / "step_1") == "s3://bucket/runs/ml/checkpoints/step_1"
    assert (path / "a").name == "a" and (path / "a").parent == path
    assert str(path.with_name("other")) == "s3://bucket/runs/other"
