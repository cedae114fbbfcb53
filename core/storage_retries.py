"""Object-store failures: which errors are worth retrying, the retries themselves (exponential backoff, each retry
logged) and the one-line StorageError that names the URL when an operation fails for good.

Transient errors (HTTP 5xx, throttling, dropped connections) that reach us after the client's own retries are
retried here; other errors become a StorageError at once (a missing key stays a FileNotFoundError).
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from typing import TypeVar

from core.log import get_logger

logger = get_logger(__name__)

T = TypeVar("T")

# Retries of a transient error after the client's own: waits of BACKOFF_SECONDS x 2^i (with jitter), i < ATTEMPTS-1.
ATTEMPTS = 5
BACKOFF_SECONDS = 0.5
# errno values s3fs and gcsfs give HTTP 5xx and throttling answers (503 SlowDown: EBUSY, 500: EREMOTEIO).
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EREMOTEIO, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED,
                     errno.EAGAIN}


class StorageError(OSError):
    """An object-store operation failed for good (no credentials, no bucket, access denied, retries exhausted);
    the message is one line that names the URL."""


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
