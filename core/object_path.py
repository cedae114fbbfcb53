"""ObjectPath: a key or prefix on an object store (s3://BUCKET/KEY, gs://BUCKET/KEY) with the part of pathlib.Path's
interface that the system's writers use (`/`, name, parent, exists, is_file, is_dir, iterdir, glob,
read_bytes/read_text, write_bytes/write_text, open, unlink, stat), implemented with fsspec; every store operation
goes through core.storage_retries. `core.storage.location()` turns a URL into one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from core.storage_retries import retrying

T = TypeVar("T")


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
