"""Where outputs live: a local path or an object-store URL (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX).

Every writer of the system (checkpoints, config.yaml, the save_dir lock, TensorBoard, reports, predictions, the
export, the data commands) names its output with `location()`, which gives a `pathlib.Path` for a local path and an
`ObjectPath` for a URL. ObjectPath has the part of Path's interface those writers use (`/`, name, parent, exists,
is_file, is_dir, iterdir, glob, read_bytes/read_text, write_bytes/write_text, open, unlink, stat), implemented with
fsspec, so one code path serves both; the few operations that differ (atomic replacement, removing a tree, uploading
a locally written directory) are functions here that dispatch on the type.

A string with a URL scheme is never taken for a local path: `check_location` (the config's and the commands'
validator) accepts a local path, file://PATH (read as PATH), or a scheme whose fsspec package is installed, and
rejects any other scheme, and `s3:/x` (a URL whose `//` was collapsed, as pathlib does), with a message that names
the value.

Object stores have no rename and no directories: a key is visible once its single PUT completes, whole. Writers
therefore write small files with one PUT (`write_bytes`), mark a group of files complete by writing a marker last
(checkpoints), and upload a directory built locally only once it is finished (`staged_output`).

Transient errors (HTTP 5xx, throttling, dropped connections) that reach us after the client's own retries are
retried here with exponential backoff, each retry logged; other errors become a StorageError, one line naming the URL.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.util
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from core.log import get_logger

logger = get_logger(__name__)

T = TypeVar("T")

# URL scheme -> (the fsspec implementation's package, the pyproject extra that installs it).
SCHEMES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/*)")

# Retries of a transient error after the client's own: waits of BACKOFF_SECONDS x 2^i (with jitter), i < ATTEMPTS-1.
ATTEMPTS = 5
BACKOFF_SECONDS = 0.5
# errno values s3fs and gcsfs give HTTP 5xx and throttling answers (503 SlowDown: EBUSY, 500: EREMOTEIO).
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                     errno.EAGAIN}


class StorageError(OSError):
    """An object-store operation failed for good (no credentials, no bucket, access denied, retries exhausted);
    the message is one line that names the URL."""


# --- which strings are URLs ------------------------------------------------------------------------------------------
def url_scheme(value: str) -> str | None:
    """The lower-case scheme of a URL (`s3` of `s3://b/k`), None for a local path. A one-letter scheme is a
    Windows drive, and `name:rest` without a slash after the colon is a local file name."""
    match = _SCHEME.match(value)
    if match is None or not match.group(2):
        return None
    return match.group(1).lower()


def check_location(value: str) -> str:
    """A config's or a command's output location, validated: a local path (returned as given; file://PATH as PATH)
    or a URL whose scheme has an installed fsspec implementation. Raises ValueError naming the value otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("an empty location: give a local path or a URL such as s3://BUCKET/PREFIX")
    scheme = url_scheme(value)
    if scheme is None:
        return value
    match = _SCHEME.match(value)
    assert match is not None  # url_scheme found one
    slashes = match.group(2)
    if scheme == "file":
        return value[len("file://"):] if slashes.startswith("//") else value[len("file:"):]
    supported = ", ".join(f"{s}://" for s in SCHEMES)
    if scheme not in SCHEMES:
        raise ValueError(f"{value}: unsupported URL scheme {scheme}:// (outputs go to a local path or {supported})")
    if slashes != "//":
        raise ValueError(f"{value}: a URL needs two slashes after the scheme ({scheme}://BUCKET/PREFIX)")
    bucket = value.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        raise ValueError(f"{value}: the URL names no bucket ({scheme}://BUCKET/PREFIX)")
    package, extra = SCHEMES[scheme]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"{value}: {scheme}:// needs the {package} package (pip install 'recap-ranker[{extra}]')")
    return value


def location_argument(value: str) -> str:
    """argparse `type` for --output / --run / --save-dir: check_location with argparse's error type."""
    import argparse

    try:
        return check_location(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def local_path_argument(value: str) -> str:
    """argparse `type` for the outputs of commands that write only to a local path (benchmarks, tune, stats):
    a URL there is an error rather than a local directory named after it."""
    import argparse

    try:
        text = check_location(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if url_scheme(text) is not None:
        raise argparse.ArgumentTypeError(f"{value}: this command writes only to a local path, not to a URL")
    return text


def is_remote(path: Any) -> bool:
    """Whether a location (a string, Path or ObjectPath) is on an object store."""
    return isinstance(path, ObjectPath) or (isinstance(path, str) and url_scheme(path) not in (None, "file"))


def location(value: str | os.PathLike | ObjectPath) -> Path | ObjectPath:
    """Path for a local path, ObjectPath for an object-store URL (validated by check_location)."""
    if isinstance(value, ObjectPath):
        return value
    if isinstance(value, Path):
        check_location(str(value))  # a URL that went through Path (s3:/b/k) is an error, never a local path
        return value
    text = check_location(os.fspath(value))
    return ObjectPath(text) if url_scheme(text) is not None else Path(text)


# --- retries and errors ----------------------------------------------------------------------------------------------
def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    code = getattr(exc, "code", None)  # gcsfs's HttpError
    return code if isinstance(code, int) else None


def is_transient(exc: BaseException | None) -> bool:
    """A failure worth retrying: HTTP 5xx or 429, throttling, a dropped connection or a timeout (on the error or
    its cause)."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, FileNotFoundError | PermissionError | FileExistsError | IsADirectoryError):
            return False
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        status = _status_of(exc)
        if status is not None and (status >= 500 or status == 429):
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                                  "ServerDisconnectedError", "ClientOSError"):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def describe_error(exc: BaseException) -> str:
    """One line saying why an object-store operation failed, with the fix where one is known."""
    name = type(exc).__name__
    text = " ".join(str(exc).split()) or name
    if name == "NoCredentialsError" or "Unable to locate credentials" in text:
        return ("no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use an "
                "instance role; GOOGLE_APPLICATION_CREDENTIALS for gs://)")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return f"the bucket does not exist ({text})"
    if isinstance(exc, PermissionError):
        return f"access denied ({text}): check the credentials and the bucket's permissions"
    if isinstance(exc, FileNotFoundError):
        return f"not found ({text})"
    return f"{name}: {text}"


def retrying(what: str, url: str, operation: Callable[[], T]) -> T:
    """Run `operation`; retry a transient failure with exponential backoff (each retry logged); a failure that
    persists, or is not transient, is a StorageError naming `url` (FileNotFoundError stays itself)."""
    for attempt in range(ATTEMPTS):
        try:
            return operation()
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc) or "bucket does not exist" in str(exc).lower():
                raise StorageError(f"{url}: {what} failed: {describe_error(exc)}") from exc
            raise
        except Exception as exc:
            if isinstance(exc, StorageError):
                raise
            if not is_transient(exc) or attempt == ATTEMPTS - 1:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise StorageError(f"{url}: {what} failed{tries}: {describe_error(exc)}") from exc
            wait = BACKOFF_SECONDS * 2**attempt * (0.5 + random.random())
            logger.warning("%s: %s failed (%s); retry %d of %d in %.1fs", url, what, describe_error(exc),
                           attempt + 1, ATTEMPTS - 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


# --- object-store paths ----------------------------------------------------------------------------------------------
def filesystem(scheme: str) -> Any:
    """The fsspec filesystem of a scheme (fsspec caches one instance per process and options). Credentials and the
    endpoint come from the client's usual sources: for s3, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE /
    an instance role and AWS_ENDPOINT_URL (MinIO, Ceph, a test server); for gs, Google's default credentials."""
    import fsspec

    return fsspec.filesystem(scheme)


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime: float


class ObjectPath:
    """A key or prefix on an object store, with pathlib.Path's methods that the writers use. A prefix is a
    "directory": is_dir() is true when keys exist under it, mkdir() does nothing."""

    __slots__ = ("scheme", "key")

    def __init__(self, url: str) -> None:
        scheme, _, rest = url.partition("://")
        self.scheme = scheme.lower()
        self.key = "/".join(part for part in rest.split("/") if part)

    # pure path operations
    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: ObjectPath) -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str | os.PathLike) -> ObjectPath:
        return ObjectPath(f"{self}/{os.fspath(part)}")

    def joinpath(self, *parts: str) -> ObjectPath:
        out = self
        for part in parts:
            out = out / part
        return out

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{self.key.rsplit('/', 1)[0]}") if "/" in self.key else self

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def is_absolute(self) -> bool:
        return True

    def resolve(self) -> ObjectPath:
        return self

    def absolute(self) -> ObjectPath:
        return self

    # store operations
    @property
    def fs(self) -> Any:
        return filesystem(self.scheme)

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        return retrying(what, str(self), operation)

    def exists(self) -> bool:
        return self._call("checking", lambda: self.fs.exists(self.key))

    def is_file(self) -> bool:
        return self._call("checking", lambda: self.fs.isfile(self.key))

    def is_dir(self) -> bool:
        return self._call("listing", lambda: self.fs.isdir(self.key))

    def iterdir(self) -> Iterator[ObjectPath]:
        def listing() -> list[str]:
            try:
                return self.fs.ls(self.key, detail=False, refresh=True)
            except FileNotFoundError:
                return []

        names = self._call("listing", listing)
        return iter(sorted(ObjectPath(f"{self.scheme}://{n}") for n in names if n.rstrip("/") != self.key))

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        self.fs.invalidate_cache(self.key)
        found = self._call("listing", lambda: self.fs.glob(f"{self.key}/{pattern}"))
        return iter(sorted(ObjectPath(f"{self.scheme}://{n}") for n in found))

    def stat(self) -> _Stat:
        """Size and modification time (the store's clock) of a key."""
        info = self._call("reading the size", lambda: self.fs.info(self.key, refresh=True))
        modified = info.get("LastModified") or info.get("updated") or info.get("mtime")
        if isinstance(modified, str):
            from datetime import datetime

            modified = datetime.fromisoformat(modified.replace("Z", "+00:00"))
        mtime = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
        return _Stat(int(info.get("size") or 0), mtime)

    def read_bytes(self) -> bytes:
        return self._call("reading", lambda: self.fs.cat_file(self.key))

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        """One PUT: the object appears whole or not at all."""
        self._call("writing", lambda: self.fs.pipe_file(self.key, bytes(data)))
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def open(self, mode: str = "rb", **kwargs: Any) -> IO:
        return self._call("opening", lambda: self.fs.open(self.key, mode, **kwargs))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self._call("deleting", lambda: self.fs.rm_file(self.key))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: an object store's prefixes exist once a key is written under them."""


# --- operations that differ between a disk and an object store -------------------------------------------------------
def write_atomic(path: Path | ObjectPath, data: bytes) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new content, never a part: on a disk a
    synced temporary file renamed over it, on an object store one PUT."""
    if isinstance(path, ObjectPath):
        path.write_bytes(data)
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rmtree(path: Path | ObjectPath, ignore_errors: bool = False) -> None:
    """Remove a directory or every key under a prefix."""
    if isinstance(path, ObjectPath):
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.fs.rm(path.key, recursive=True)
            path.fs.invalidate_cache(path.key)

        try:
            path._call("deleting", remove)
        except StorageError:
            if not ignore_errors:
                raise
        return
    shutil.rmtree(path, ignore_errors=ignore_errors)


def move_tree(source: Path | ObjectPath, target: Path | ObjectPath) -> None:
    """Rename a directory; on an object store, copy every key under the prefix and delete the originals."""
    if isinstance(source, ObjectPath):
        assert isinstance(target, ObjectPath), "a prefix on a store moves within the store"

        def move() -> None:
            fs = source.fs
            fs.invalidate_cache(source.key)
            keys = fs.find(source.key)
            for key in keys:  # server-side copies, then the originals go
                fs.copy(key, target.key + key[len(source.key):])
            if keys:
                fs.rm(keys)
            fs.invalidate_cache(source.key)
            fs.invalidate_cache(target.key)

        source._call("moving", move)
        return
    assert isinstance(target, Path), "a local directory moves to a local path"
    os.rename(source, target)


def upload_file(source: Path, target: ObjectPath) -> None:
    """Copy one local file to the store."""
    target._call("uploading", lambda: target.fs.put_file(str(source), target.key))


def upload_tree(source: Path, target: ObjectPath) -> int:
    """Copy every file under the local directory `source` to the prefix `target` (same relative names); returns
    the number of files."""
    count = 0
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        upload_file(file, target / file.relative_to(source).as_posix())
        count += 1
    return count


def download_tree(source: ObjectPath, target: Path) -> int:
    """Copy every key under the prefix `source` into the local directory `target`; returns the number of files."""
    fs = source.fs
    fs.invalidate_cache(source.key)
    keys = source._call("listing", lambda: fs.find(source.key))
    for key in keys:
        local = target / key[len(source.key):].lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        source._call("downloading", functools.partial(fs.get_file, key, str(local)))
    return len(keys)


@contextlib.contextmanager
def staged_output(output: str | os.PathLike | Path | ObjectPath) -> Iterator[Path]:
    """A local directory to write an output directory into. For a local output, the output itself; for an
    object-store prefix, a temporary directory uploaded there when the block ends without an error (then
    deleted), so a failed command leaves no partial output on the store."""
    target = location(output)
    if isinstance(target, Path):
        yield target
        return
    staging = Path(tempfile.mkdtemp(prefix="recap-out-"))
    try:
        yield staging
        files = upload_tree(staging, target)
        logger.info("uploaded %d file(s) to %s", files, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
