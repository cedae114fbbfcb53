"""A real S3-protocol server for tests: moto's server in a subprocess on a port of 127.0.0.1 that the system picks
(nothing leaves the machine), reached by s3fs and pyarrow as production reaches S3 or MinIO: credentials in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the endpoint in AWS_ENDPOINT_URL. Skipped where moto or s3fs is not
installed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]  # the variables a client (this process or a subprocess) needs

    def make_bucket(self, name: str) -> str:
        """Create a bucket; returns its URL s3://NAME."""
        fs = _fs()
        fs.mkdir(name)
        return f"s3://{name}"

    def upload(self, local: Path, url: str) -> str:
        """Copy a local directory tree to an s3:// prefix; returns the URL."""
        from core.storage import location
        from core.storage_ops import upload_tree

        upload_tree(local, location(url))
        return url


def _fs():
    import fsspec

    return fsspec.filesystem("s3")


def _clear_client_caches() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """Start moto's S3 server, point this process's environment at it, and stop it afterwards."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    # Port 0: the server binds a port the system picks and logs it, so servers started at once (tests in parallel
    # workers) never race for the same free port.
    log_path = log_dir / "moto.log"
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                              stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        found = re.search(r"Running on http://127\.0\.0\.1:(\d+)", log_path.read_text())
        if found:
            port = int(found.group(1))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"moto's server did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(env)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(key, None)
    _clear_client_caches()
    try:
        yield S3Server(env["AWS_ENDPOINT_URL"], env)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _clear_client_caches()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
