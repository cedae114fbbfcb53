"""Which parquet columns make which part of a batch: the roles of the configured columns, in batch order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from projects.home.recap.data.config import DataConfig

# The parts of a RecapBatch a column can feed.
KINDS = ("continuous", "binary", "discrete", "sparse", "embeddings", "label", "weight", "id", "oracle",
         "sequence_id", "sequence_action", "sequence_continuous", "candidate")
# A task's true probability, when the data knows it (synthetic data), is the column ORACLE_PREFIX + its label column.
ORACLE_PREFIX = "oracle."


@dataclass(frozen=True)
class ColumnRole:
    """One configured column: its batch part, its fixed length (None: a scalar column) and its config key."""

    name: str
    kind: str
    length: int | None
    key: str

    @property
    def width(self) -> int:
        return self.length or 1


@dataclass(frozen=True)
class SequenceLayout:
    """One history group: its list columns (ids, optional actions, continuous) and each id column's candidate."""

    group: str
    max_length: int
    most_recent: str  # "first" or "last": the end of the stored lists holding the most recent item
    ids: tuple[ColumnRole, ...]
    actions: ColumnRole | None
    continuous: tuple[ColumnRole, ...]
    candidates: tuple[ColumnRole | None, ...]  # per id column
    num_actions: int | None = None  # action ids must be in [0, num_actions) (None: not known, not checked)

    def list_roles(self) -> tuple[ColumnRole, ...]:
        return (*self.ids, *((self.actions,) if self.actions else ()), *self.continuous)

    def roles(self) -> list[ColumnRole]:
        return [*self.list_roles(), *(c for c in self.candidates if c is not None)]


@dataclass(frozen=True)
class BatchLayout:
    """The columns a loader reads, grouped by batch part; labels are in the model's task order."""

    continuous: tuple[ColumnRole, ...]
    binary: tuple[ColumnRole, ...]
    discrete: tuple[ColumnRole, ...]
    sparse: tuple[ColumnRole, ...]
    embeddings: tuple[ColumnRole, ...]
    labels: tuple[ColumnRole, ...]
    weight: ColumnRole | None
    ids: tuple[ColumnRole, ...]
    tasks: tuple[str, ...]
    pos_rates: tuple[float, ...]
    neg_rates: tuple[float, ...]
    # The tasks' oracle.<label> columns in task order (keyed by the task's label key), or () for batches without.
    oracle: tuple[ColumnRole, ...] = ()
    sequences: tuple[SequenceLayout, ...] = ()

    def roles(self) -> list[ColumnRole]:
        """Every column in reading order."""
        out = [*self.continuous, *self.binary, *self.discrete, *self.sparse, *self.embeddings, *self.labels]
        if self.weight is not None:
            out.append(self.weight)
        out += [r for group in self.sequences for r in group.roles()]
        return out + list(self.ids) + list(self.oracle)

    def oracle_candidates(self) -> tuple[ColumnRole, ...]:
        """The oracle column each task would read, in task order."""
        return tuple(ColumnRole(ORACLE_PREFIX + r.name, "oracle", None, r.key)
                     for r in self.labels)

    def with_oracle(self) -> BatchLayout:
        """The same layout, also reading every task's oracle column."""
        return dataclasses.replace(self, oracle=self.oracle_candidates())

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(r.name for r in self.roles()))


def build_layout(data: DataConfig, tasks: list[str]) -> BatchLayout:
    """The layout for the model's tasks (matched to label columns by name); an unknown task is an error."""
    missing = [t for t in tasks if t not in data.tasks]
    if missing:
        raise ValueError(
            f"tasks {missing} have no entry in data.tasks (known: {sorted(data.tasks)}); tasks are matched to "
            "label columns by name"
        )
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks {tasks} name a task twice")
    f = data.features

    def specs(kind: str, columns) -> tuple[ColumnRole, ...]:
        return tuple(ColumnRole(c.name, kind, c.length, f"data.features.{kind}[{i}]") for i, c in enumerate(columns))

    return BatchLayout(
        continuous=specs("continuous", f.continuous),
        binary=specs("binary", f.binary),
        discrete=specs("discrete", f.discrete),
        sparse=tuple(ColumnRole(n, "sparse", None, f"data.features.sparse[{i}]") for i, n in enumerate(f.sparse)),
        embeddings=tuple(
            ColumnRole(e.name, "embeddings", e.dim, f"data.features.embeddings[{i}]") for i, e in enumerate(f.embeddings)
        ),
        labels=tuple(ColumnRole(data.tasks[t].label, "label", None, f"data.tasks.{t}.label") for t in tasks),
        weight=ColumnRole(f.weight, "weight", None, "data.features.weight") if f.weight else None,
        ids=tuple(ColumnRole(n, "id", None, f"data.features.ids[{i}]") for i, n in enumerate(f.ids)),
        tasks=tuple(tasks),
        pos_rates=tuple(data.weight_rates(t)[0] for t in tasks),
        neg_rates=tuple(data.weight_rates(t)[1] for t in tasks),
        sequences=tuple(_sequence_layout(name, group) for name, group in f.sequences.items()),
    )


def _sequence_layout(name: str, group) -> SequenceLayout:
    key = f"data.features.sequences.{name}"
    return SequenceLayout(
        group=name,
        max_length=group.max_length,
        most_recent=group.most_recent,
        ids=tuple(ColumnRole(c.name, "sequence_id", None, f"{key}.ids[{i}]") for i, c in enumerate(group.ids)),
        actions=ColumnRole(group.actions, "sequence_action", None, f"{key}.actions") if group.actions else None,
        continuous=tuple(ColumnRole(c, "sequence_continuous", None, f"{key}.continuous[{i}]")
                         for i, c in enumerate(group.continuous)),
        candidates=tuple(ColumnRole(c.candidate, "candidate", None, f"{key}.ids[{i}].candidate")
                         if c.candidate else None for i, c in enumerate(group.ids)),
        num_actions=group._num_actions,
    )
