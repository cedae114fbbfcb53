"""ArrayBlock (the rows of a table in batch layout as numpy arrays) and the names of its dense parts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The dense parts of a block, each an [N, width] matrix (oracle: None when the layout does not read it).
DENSE_PARTS = ("continuous", "binary", "discrete", "embeddings", "labels", "weights", "oracle")


@dataclass
class ArrayBlock:
    """Rows in batch layout as numpy arrays: the form a worker converts, shuffles and ships rows in."""

    continuous: np.ndarray  # [N, C] float32
    binary: np.ndarray  # [N, Nb] float32
    discrete: np.ndarray  # [N, D] int64
    embeddings: np.ndarray  # [N, E] float32
    labels: np.ndarray  # [N, T] float32
    weights: np.ndarray  # [N, T] float32
    sparse: list[tuple[np.ndarray, np.ndarray]]  # per sparse column: (offsets [N+1] int64, values int64)
    ids: dict[str, np.ndarray]
    oracle: np.ndarray | None = None  # [N, T] float32 true probabilities, when the layout reads them
    # History groups (sequence_arrays): {group: {"offsets", "id:<col>", "actions", "continuous", "candidate:<col>"}}
    sequences: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return len(self.sparse[0][0]) - 1 if self.labels is None else self.labels.shape[0]

    @staticmethod
    def concat_sparse_and_ids(blocks: list[ArrayBlock]) -> ArrayBlock:
        """A block holding the sparse columns and ids of several blocks, one after another (dense parts left out)."""
        if len(blocks) == 1:
            return blocks[0]
        sparse = []
        for k in range(len(blocks[0].sparse)):
            offsets, values, shift = [np.zeros(1, dtype=np.int64)], [], 0
            for b in blocks:
                off, vals = b.sparse[k]
                offsets.append(off[1:] - off[0] + shift)
                values.append(vals[off[0] : off[-1]])
                shift += int(off[-1] - off[0])
            sparse.append((np.concatenate(offsets), np.concatenate(values)))
        return ArrayBlock(
            **{f: None for f in DENSE_PARTS},
            sparse=sparse,
            ids={k: np.concatenate([b.ids[k] for b in blocks]) for k in blocks[0].ids},
        )

    def take_ids(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The ids of the given rows, in the given order."""
        return {k: v[rows] for k, v in self.ids.items()}
