"""core/storage_retries.py without a server: transient errors retried with backoff and logged, a lasting one given
up on, permanent errors at once, each a one-line StorageError naming the URL."""

import errno

import pytest

from core import storage_retries


def test_a_transient_error_is_retried_with_backoff_and_logged(monkeypatch, caplog):
    monkeypatch.setattr(storage_retries, "BACKOFF_SECONDS", 0.001)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(errno.EBUSY, "SlowDown: please reduce your request rate")  # s3fs's 503
        return "ok"

    assert storage_retries.retrying("writing", "s3://b/k", flaky) == "ok"
    assert len(calls) == 3
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "s3://b/k" in retries[0] and "SlowDown" in retries[0]


def test_a_persistent_transient_error_gives_up(monkeypatch):
    monkeypatch.setattr(storage_retries, "BACKOFF_SECONDS", 0.001)
    calls = []

    def down():
        calls.append(1)
        raise ConnectionError("connection reset")

    with pytest.raises(storage_retries.StorageError, match=r"^s3://b/k: writing failed after 5 attempts"):
        storage_retries.retrying("writing", "s3://b/k", down)
    assert len(calls) == storage_retries.ATTEMPTS


def test_a_permanent_error_is_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError("Access Denied")

    with pytest.raises(storage_retries.StorageError, match=r"s3://b/k: reading failed: access denied"):
        storage_retries.retrying("reading", "s3://b/k", denied)
    assert len(calls) == 1


def test_a_missing_file_stays_file_not_found():
    def missing():
        raise FileNotFoundError("b/k")

    with pytest.raises(FileNotFoundError):
        storage_retries.retrying("reading", "s3://b/k", missing)
