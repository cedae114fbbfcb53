"""The error raised for bad input data: it always names the file (or path) and, where it applies, the column."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used as configured: missing or mistyped column, bad labels, empty or corrupt files."""

    def __init__(self, message: str, path: str | None = None, column: str | None = None):
        # One line, as `recap train` and the data commands log it: the pyarrow errors quoted in messages can span
        # several (a corrupt page: "Couldn't deserialize thrift: ...\nDeserializing page header failed.\n").
        message = " ".join(message.split())
        where = ", ".join(part for part in (path and f"file {path}", column and f"column {column!r}") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = path
        self.column = column

    def __reduce__(self):
        # Keeps the exception intact when it travels back from a DataLoader worker process.
        return (_rebuild, (str(self), self.path, self.column))


def _rebuild(text: str, path: str | None, column: str | None) -> DataError:
    err = DataError(text)
    err.path, err.column = path, column
    return err
