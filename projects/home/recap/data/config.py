"""Data section of the recap config: the feature schema, the tasks' labels (matched by name) and the datasets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from core.config import BaseConfig


class ColumnSpec(BaseConfig):
    """One parquet column. `length` unset: a scalar column; set: a fixed-length list column giving `length` values."""

    name: str
    length: int | None = Field(default=None, ge=1)

    @property
    def width(self) -> int:
        return self.length or 1


def _columns(value: Any) -> Any:
    # A bare string in YAML means a scalar column: `continuous: [a, b]` is short for `[{name: a}, {name: b}]`.
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


class DenseEmbeddingSpec(BaseConfig):
    """A fixed-length float vector computed upstream (e.g. a 200-d user embedding), stored as a list column."""

    name: str
    dim: int = Field(ge=1)


class SequenceIdSpec(BaseConfig):
    """A list<int64> id column of an engagement history, and the candidate's column its ids are compared with (a
    scalar integer or list<int64> column of the same id space; a list gives its first id, an empty one id 0)."""

    name: str
    candidate: str | None = None


class SequenceGroupSpec(BaseConfig):
    """A history group: list columns of equal length per row, one item per engagement.

    `most_recent` says which end of the stored lists is the most recent item; batches always hold the `max_length`
    most recent items, most recent first. A null list is an empty history; a null inside a list is an error."""

    max_length: int = Field(ge=1)
    most_recent: Literal["first", "last"] = "first"
    ids: list[SequenceIdSpec] = Field(min_length=1)
    # A list<int> column of small action types (favorite, reply, ...), ids in [0, model num_actions).
    actions: str | None = None
    # list<float> columns of per-item values (e.g. the engagement's age in hours).
    continuous: list[str] = []
    # The model's num_actions for this group (model.sequences.<group>.num_actions), set when the experiment config
    # is validated: the loader rejects action ids outside [0, num_actions) with the file and column, where the model
    # could only clamp them (a device-side check would cost a synchronization per training step).
    _num_actions: int | None = PrivateAttr(default=None)

    @field_validator("ids", mode="before")
    @classmethod
    def _id_shorthand(cls, value: Any) -> Any:
        return _columns(value)

    def list_columns(self) -> list[str]:
        """The group's list columns: ids, then actions, then continuous."""
        return [c.name for c in self.ids] + ([self.actions] if self.actions else []) + list(self.continuous)


class FeatureSchema(BaseConfig):
    """Which parquet columns feed the model, by kind."""

    continuous: list[ColumnSpec] = []
    binary: list[ColumnSpec] = []
    discrete: list[ColumnSpec] = []
    # Variable-length list<int64> (or scalar int64) id columns, looked up in the large embedding tables. A null list
    # or null scalar is a row without ids (an empty bag).
    sparse: list[str] = []
    embeddings: list[DenseEmbeddingSpec] = []
    # Optional per-row weight column, multiplied into every task's sample weight.
    weight: str | None = None
    # Columns copied through to predictions (request id, user id, ...).
    ids: list[str] = []
    # Engagement histories by group name: list columns per row (model.sequences encodes them).
    sequences: dict[str, SequenceGroupSpec] = {}

    @field_validator("continuous", "binary", "discrete", mode="before")
    @classmethod
    def _scalar_shorthand(cls, value: Any) -> Any:
        return _columns(value)

    @property
    def num_continuous(self) -> int:
        return sum(c.width for c in self.continuous)

    @property
    def num_binary(self) -> int:
        return sum(c.width for c in self.binary)

    @property
    def num_discrete(self) -> int:
        return sum(c.width for c in self.discrete)

    @staticmethod
    def _span(columns: list[ColumnSpec], name: str) -> tuple[int, ColumnSpec]:
        """(first position, spec) of the named column among `columns`, list columns taking `width` positions."""
        offset = 0
        for col in columns:
            if col.name == name:
                return offset, col
            offset += col.width
        raise KeyError(name)

    def discrete_span(self, name: str) -> tuple[int, int]:
        """(first position, width) of a discrete column, scalar or list, in the batch's `discrete` tensor."""
        offset, col = self._span(self.discrete, name)
        return offset, col.width

    def continuous_span(self, name: str) -> tuple[int, int]:
        """(first position, width) of a continuous column, scalar or list, in the batch's `continuous` tensor."""
        offset, col = self._span(self.continuous, name)
        return offset, col.width

    def discrete_index(self, name: str) -> int:
        """Position of a scalar discrete column in the batch's `discrete` tensor."""
        offset, col = self._span(self.discrete, name)
        if col.length is not None:
            raise ValueError(f"discrete column {name!r} is a list column; a scalar one is needed here")
        return offset

    def all_columns(self) -> list[str]:
        """Every feature, weight and id column the schema names (labels excluded)."""
        names = [c.name for c in self.continuous + self.binary + self.discrete]
        names += list(self.sparse) + [e.name for e in self.embeddings] + list(self.ids)
        if self.weight:
            names.append(self.weight)
        # A history's candidate columns are usually other features too: only its list columns count here.
        names += [c for group in self.sequences.values() for c in group.list_columns()]
        return names

    @field_validator("sequences")
    @classmethod
    def _group_names(cls, value: dict[str, SequenceGroupSpec]) -> dict[str, SequenceGroupSpec]:
        bad = [g for g in value if not g.isidentifier()]
        if bad:
            raise ValueError(f"sequence group names {bad} must be letters, digits and underscores")
        return value

    @model_validator(mode="after")
    def _unique(self):
        seen: set[str] = set()
        for name in self.all_columns():
            if name in seen:
                raise ValueError(f"column {name!r} is named twice in the feature schema")
            seen.add(name)
        return self


class TaskDataConfig(BaseConfig):
    """A task's label column and the rates at which its positives and negatives were kept when the logs were sampled."""

    label: str
    pos_rate: float = Field(default=1.0, gt=0.0, le=1.0)
    neg_rate: float = Field(default=1.0, gt=0.0, le=1.0)


class DatasetConfig(BaseConfig):
    """Parquet input: files, directories, globs or fsspec URLs."""

    paths: list[str] = Field(min_length=1)

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class DataConfig(BaseConfig):
    """Where the data is, what its columns mean and how it is batched."""

    features: FeatureSchema
    # Data tasks by name; the model's tasks must be a subset, matched by name, never by position.
    tasks: dict[str, TaskDataConfig] = Field(min_length=1)
    train: DatasetConfig | None = None
    validation: dict[str, DatasetConfig] = {}
    batch_size: int = Field(default=512, ge=1)
    eval_batch_size: int | None = Field(default=None, ge=1)
    # DataLoader worker processes per rank (0 = read in the training process).
    num_workers: int = Field(default=1, ge=0)
    shuffle: bool = True
    # Rows held in the shuffle buffer, per worker.
    shuffle_buffer_rows: int = Field(default=65536, ge=1)
    seed: int = 0
    # Skip a corrupt parquet file with a warning instead of failing.
    ignore_data_errors: bool = False
    # How tasks' pos_rate/neg_rate are undone (never both, which would correct twice): "weights" trains with
    # w = y/pos_rate + (1-y)/neg_rate so the model predicts the true rate directly; "calibration" trains on the
    # sampled rate and maps predictions back with p*r / (1 - p + r*p), r = neg_rate/pos_rate.
    downsampling_correction: Literal["weights", "calibration"] = "weights"

    def weight_rates(self, task: str) -> tuple[float, float]:
        """(pos_rate, neg_rate) that the training weights divide by."""
        cfg = self.tasks[task]
        return (cfg.pos_rate, cfg.neg_rate) if self.downsampling_correction == "weights" else (1.0, 1.0)

    def calibration_rates(self, task: str) -> tuple[float, float]:
        """(pos_rate, neg_rate) that the model's calibration maps predictions back from."""
        cfg = self.tasks[task]
        return (cfg.pos_rate, cfg.neg_rate) if self.downsampling_correction == "calibration" else (1.0, 1.0)

    @model_validator(mode="after")
    def _labels_are_not_features(self):
        features = set(self.features.all_columns())
        for task, cfg in self.tasks.items():
            if cfg.label in features:
                raise ValueError(f"tasks.{task}.label {cfg.label!r} is also a feature column")
        return self
