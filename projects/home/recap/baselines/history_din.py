"""A plain-PyTorch DIN on the generator's history schema: the history-aware peer a user would write without us.

    python -m projects.home.recap.baselines.history_din --data DIR [--steps 600] [--output FILE]

DIR is written by `recap data generate --history-length L` (optionally `--history-ratings`). The model, as DIN
(Zhou et al. 2018) describes it and peer libraries ship it: one 16-d table per id space (user, author, hashtag,
shared by the candidate and its history, ids taken modulo the table size), an action-type embedding per item, the
item token [author, hashtag, action]; an attention MLP over [h, c, h - c, h * c] (36 hidden, ReLU) weighs each real
item against the candidate token without softmax; the weighted sum joins the candidate's own embeddings, the small
categorical embeddings, the sign-log continuous values and the binary and dense-embedding inputs; a shared MLP
[256, 128] with per-task heads [64]; Adam 1e-3, batch 512, the same steps as the comparison run of ours. The position
column is handled as the demo configs' model.position_debias does (unknown for half the training rows and at
evaluation; `--position-as-feature` reads it plainly, which a model served before positions exist cannot). Test AUC
and RCE per task with core.metrics, and the oracle's RCE for scale.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn

from projects.home.recap.baselines.history_peers import LABEL, TASKS, finish, task_figures

SIZES = {"user_id": 100_000, "author_id": 50_000, "hashtags": 20_000}
SMALL = {"client_id": 16, "author_type": 8, "hour_of_day": 24, "position": 32}
POSITION = list(SMALL).index("position")
DIM = 16


def _padded(column, rows: int, length: int, dtype=np.int64) -> np.ndarray:
    lists = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(dtype)
    out = np.zeros((rows, length), dtype=dtype)
    mask = np.arange(length) < np.minimum(lengths, length)[:, None]
    keep = np.concatenate([np.arange(n) < length for n in lengths]) if len(lengths) else np.zeros(0, bool)
    out[mask] = flat[keep]
    return out


def load(split: Path) -> dict[str, torch.Tensor]:
    table = pq.read_table(split)
    rows = table.num_rows
    fixed = {n: np.stack(table.column(n).to_numpy(zero_copy_only=False)).astype(np.float32)
             for n in ("recap.continuous", "recap.binary", "user_embedding", "author_embedding", "tweet_embedding")}
    cont = fixed["recap.continuous"]
    cont = np.sign(cont) * np.log1p(np.abs(np.nan_to_num(cont, nan=0.0, posinf=0.0, neginf=0.0)))
    dense = np.concatenate([cont, fixed["recap.binary"], fixed["user_embedding"], fixed["author_embedding"],
                            fixed["tweet_embedding"]], 1)
    length = int(pc.max(pc.list_value_length(table.column("history.author_id"))).as_py() or 1)
    out = {
        "dense": torch.from_numpy(np.nan_to_num(dense, nan=0.0)),
        "small": torch.from_numpy(np.stack([np.remainder(table.column(n).to_numpy(), SMALL[n]) for n in SMALL], 1)),
        "user": torch.from_numpy(_padded(table.column("user_id"), rows, 1)[:, 0]),
        "author": torch.from_numpy(_padded(table.column("author_id"), rows, 1)[:, 0]),
        "hashtags": torch.from_numpy(_padded(table.column("hashtags"), rows, 8)),
        "hashtag_count": torch.from_numpy(pc.list_value_length(table.column("hashtags")).to_numpy().clip(0, 8)),
        "h_author": torch.from_numpy(_padded(table.column("history.author_id"), rows, length)),
        "h_tag": torch.from_numpy(_padded(table.column("history.hashtag"), rows, length)),
        "h_action": torch.from_numpy(_padded(table.column("history.action"), rows, length)),
        "h_length": torch.from_numpy(pc.list_value_length(table.column("history.author_id")).to_numpy()
                                     .clip(0, length)),
        "labels": torch.from_numpy(np.stack([table.column(LABEL + t).to_numpy() for t in TASKS], 1)
                                   .astype(np.float32)),
        "oracle": torch.from_numpy(np.stack([table.column("oracle." + LABEL + t).to_numpy() for t in TASKS], 1)),
    }
    return out


class PlainDIN(nn.Module):
    def __init__(self, dense_width: int, num_actions: int, num_tasks: int, position_debias: bool = True) -> None:
        """position_debias: the position column as the compared configs treat it (model.position_debias): an
        "unknown" position for half the training rows and for every row at evaluation, as at serving time, where
        the position is not known yet; False: the position as a plain feature."""
        super().__init__()
        self.tables = nn.ModuleDict({k: nn.Embedding(n, DIM) for k, n in SIZES.items()})
        self.actions = nn.Embedding(num_actions + 1, DIM)  # the last: the candidate's
        # One more row per small table: the "unknown" position.
        self.small = nn.ModuleList(nn.Embedding(n + 1, 4) for n in SMALL.values())
        self.position_debias = position_debias
        self.attention = nn.Sequential(nn.Linear(4 * 3 * DIM, 36), nn.ReLU(), nn.Linear(36, 1))
        width = dense_width + 4 * len(SMALL) + DIM + 3 * DIM + 3 * DIM  # dense, small, user, c, interest
        self.bottom = nn.Sequential(nn.Linear(width, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))
                                   for _ in range(num_tasks))
        self.num_actions = num_actions

    def forward(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        user = self.tables["user_id"](b["user"] % SIZES["user_id"])
        author = self.tables["author_id"](b["author"] % SIZES["author_id"])
        tag_mask = (torch.arange(b["hashtags"].shape[1]) < b["hashtag_count"][:, None]).float()
        tags = self.tables["hashtags"](b["hashtags"] % SIZES["hashtags"])
        tag = (tags * tag_mask[..., None]).sum(1) / tag_mask.sum(1, keepdim=True).clamp(min=1)
        cand_action = self.actions(torch.full_like(b["author"], self.num_actions))
        c = torch.cat([author, tag, cand_action], 1)  # [B, 3D]
        h = torch.cat([self.tables["author_id"](b["h_author"] % SIZES["author_id"]),
                       self.tables["hashtags"](b["h_tag"] % SIZES["hashtags"]),
                       self.actions(b["h_action"].clamp(0, self.num_actions - 1))], 2)  # [B, L, 3D]
        mask = (torch.arange(h.shape[1]) < b["h_length"][:, None]).float()
        cc = c[:, None, :].expand_as(h)
        weights = self.attention(torch.cat([h, cc, h - cc, h * cc], 2)).squeeze(2) * mask
        interest = torch.einsum("bl,bld->bd", weights, h)
        small_ids = b["small"]
        if self.position_debias:
            unknown = SMALL["position"]
            drop = torch.rand(len(small_ids)) < 0.5 if self.training else torch.ones(len(small_ids), dtype=torch.bool)
            small_ids = small_ids.clone()
            small_ids[drop, POSITION] = unknown
        small = [t(small_ids[:, j]) for j, t in enumerate(self.small)]
        x = torch.cat([b["dense"], *small, user, c, interest], 1)
        shared = self.bottom(x)
        return torch.cat([head(shared) for head in self.heads], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--num-actions", type=int, default=4)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--position-as-feature", action="store_true",
                        help="the position column as a plain feature, known at evaluation (default: as "
                             "model.position_debias treats it, unknown at evaluation)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    train, test = load(args.data / "train"), load(args.data / args.split)
    model = PlainDIN(train["dense"].shape[1], args.num_actions, len(TASKS), not args.position_as_feature)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    g = torch.Generator().manual_seed(args.seed)
    rows = len(train["labels"])
    order = torch.randperm(rows, generator=g)
    start = time.perf_counter()
    for step in range(args.steps):
        lo = (step * args.batch_size) % rows
        if lo + args.batch_size > rows:
            order = torch.randperm(rows, generator=g)
            lo = 0
        idx = order[lo:lo + args.batch_size]
        batch = {k: v[idx] for k, v in train.items()}
        loss = loss_fn(model(batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(model({k: v[i:i + 8192] for k, v in test.items()}))
                           for i in range(0, len(test["labels"]), 8192)])
    labels, oracle = test["labels"].numpy(), test["oracle"].numpy()
    out = {"steps": args.steps, "seconds": seconds, "position_debias": not args.position_as_feature,
           "tasks": {task: task_figures(task, probs[:, j].numpy(), labels[:, j], oracle[:, j])
                     for j, task in enumerate(TASKS)}}
    finish(out, f"{args.steps} steps, {seconds:.0f} s", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
