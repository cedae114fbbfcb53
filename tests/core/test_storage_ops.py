"""core/storage_ops.py without a server (the object-store side is in test_storage_s3.py)."""

from core import storage_ops


def test_staged_output_is_the_output_itself_when_local(tmp_path):
    with storage_ops.staged_output(tmp_path / "out") as staging:
        assert staging == tmp_path / "out"
