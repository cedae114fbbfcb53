"""Where outputs live: a local path or an object-store URL (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX).

Every writer of the system (checkpoints, config.yaml, the save_dir lock, TensorBoard, reports, predictions, the
export, the data commands) names its output with `location()`, which gives a `pathlib.Path` for a local path and an
`ObjectPath` for a URL. ObjectPath (core/object_path.py) has the part of Path's interface those writers use,
implemented with fsspec, so one code path serves both; the few operations that differ (atomic replacement, removing
a tree, uploading a locally written directory) are functions of core/storage_ops.py that dispatch on the type, and
core/storage_retries.py retries an object store's transient errors and words the StorageError of a lasting one.

A string with a URL scheme is never taken for a local path: `check_location` (the config's and the commands'
validator) accepts a local path, file://PATH (read as PATH), or a scheme whose fsspec package is installed, and
rejects any other scheme, and `s3:/x` (a URL whose `//` was collapsed, as pathlib does), with a message that names
the value.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from core.object_path import ObjectPath

# URL scheme -> (the fsspec implementation's package, the pyproject extra that installs it).
SCHEMES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(/*)")


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
