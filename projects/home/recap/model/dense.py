"""DenseRankingModel: everything after the sparse lookup, on plain tensors (exportable and scriptable).

Featurized inputs -> [backbone or expert mixture] -> one tower (`TaskHead`: tower, final logit, optional `AffineMap`)
per task -> logits, probabilities, calibrated probabilities and the optional ranking score. The sparse lookup that
feeds its pooled input and the padded history groups lives in model/multi_task.py.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from common.calibration import calibrate_logits
from projects.home.recap.model.grouped_towers import group_plan, grouped_logits

MultiTaskType = Literal["share_none", "share_all", "share_partial", "mmoe", "ple"]


class AffineMap(nn.Module):
    """logit <- scale * logit + bias; trainable parameters or fixed buffers."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0, trainable: bool = True) -> None:
        super().__init__()
        if trainable:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
            self.bias = nn.Parameter(torch.tensor(float(bias)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))
            self.register_buffer("bias", torch.tensor(float(bias)))

    def forward(self, logit: torch.Tensor) -> torch.Tensor:
        return logit * self.scale + self.bias


class TaskHead(nn.Module):
    """One task: its tower, a Linear to one logit and an optional affine map."""

    def __init__(self, tower: nn.Module, affine_map: AffineMap | None = None) -> None:
        super().__init__()
        self.tower = tower
        self.final_logit = nn.Linear(tower.output_dim, 1)
        self.affine_map = affine_map if affine_map is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tower(x)["output"]
        if h.device.type == "cpu" or torch.compiler.is_compiling():
            # The one-output product as a multiply and a row sum: inductor fuses them into one kernel forward and
            # one backward, and on the CPU they are cheaper than its three matmul calls (~25 us each for 64 numbers a
            # row; a demo training step: +2-3% compiled, +1.5-5% eager fp32). Under autocast the logit is float32.
            final = self.final_logit
            return self.affine_map((h * final.weight).sum(dim=1, keepdim=True) + final.bias)
        return self.affine_map(self.final_logit(h))


class DenseRankingModel(nn.Module):
    """Everything after the sparse lookup; plain tensors in, logits / probabilities / calibrated probabilities out.

    Inputs: continuous [B, C], binary [B, Nb], discrete [B, D] int64, embeddings [B, E] (the dense upstream vectors),
    pooled_sparse [B, P] (the collection's pooled output), and the padded history groups (common/history.py), one
    per row or, with request_of_row [B], one per request.
    Outputs: logits, probabilities, calibrated_probabilities [B, T]; with scoring weights w also score [B] =
    calibrated_probabilities @ w; with an expert mixture the gate weights [B, K] of each gate under "gates/<task>"
    (MMoE) or "gates/level_<l>/<task or shared>" (PLE). The input features are concatenated once in the order
    featurized continuous+binary, numeric embeddings (of the raw continuous values), dense embeddings, small
    embeddings, position debias, pooled sparse.
    """

    def __init__(
        self,
        featurizer: nn.Module,
        tasks: dict[str, TaskHead],
        log_ratios: list[float],
        dense_embeddings: nn.Module | None = None,
        small_embeddings: nn.Module | None = None,
        position_debias: nn.Module | None = None,
        pooled_sparse_dim: int = 0,
        multi_task_type: MultiTaskType = "share_none",
        backbone: nn.Module | None = None,
        numeric_embeddings: nn.Module | None = None,
        mixture: nn.Module | None = None,
        score_weights: list[float] | None = None,
        histories: nn.ModuleDict | None = None,
        group_towers: bool | Literal["auto"] = False,
    ) -> None:
        super().__init__()
        mixed = multi_task_type in ("mmoe", "ple")
        if (mixture is None) == mixed:
            raise ValueError(f"multi_task_type {multi_task_type} {'needs' if mixed else 'takes no'} mixture")
        if (backbone is None) != (multi_task_type in ("share_none", "mmoe", "ple")):
            raise ValueError(
                f"multi_task_type {multi_task_type} {'needs' if backbone is None else 'takes no'} backbone"
            )
        if len(log_ratios) != len(tasks):
            raise ValueError(f"{len(tasks)} tasks but {len(log_ratios)} calibration ratios")
        if score_weights is not None and len(score_weights) != len(tasks):
            raise ValueError(f"{len(tasks)} tasks but {len(score_weights)} scoring weights")
        self.featurizer = featurizer
        self.numeric_embeddings = numeric_embeddings
        self.dense_embeddings = dense_embeddings
        self.small_embeddings = small_embeddings
        self.position_debias = position_debias
        self.pooled_sparse_dim = pooled_sparse_dim
        # Engagement-history encoders by group (common/history.py); each adds [encoded, candidate token].
        self.histories = histories
        self.backbone = backbone
        # MMoE or PLE (common/expert_mixtures.py): one mixture of experts per task, read by that task's tower.
        self.mixture = mixture
        self.share_partial = multi_task_type == "share_partial"
        self.task_modules = nn.ModuleDict(tasks)
        self.task_names = list(tasks)
        # With group_towers, towers of one architecture run as one grouped computation (model/grouped_towers.py):
        # the same parameters and maths in a few large products. "auto" groups them where that was measured faster:
        # under bf16 autocast, not compiled (towers_grouped). The attributes can be switched at any time.
        self._tower_plan = group_plan(list(tasks.values()))
        if group_towers not in (True, False, "auto"):
            raise ValueError(f"model.group_towers: {group_towers!r} is not true, false or auto")
        if group_towers is True and self._tower_plan is None:
            raise ValueError("model.group_towers: the task towers cannot be grouped; each must be an MLP of the same "
                             "layer sizes and dropout, without batch norm")
        self.group_towers = group_towers is True
        self.group_towers_in_bf16 = group_towers == "auto" and self._tower_plan is not None
        # From the data config, not the checkpoint: changing the sampling rates re-calibrates a trained model.
        self.register_buffer("log_ratio", torch.tensor(log_ratios, dtype=torch.float32), persistent=False)
        # The ranking score's weights (model.scoring), also from the config: re-weighting needs no retraining.
        self.has_score = score_weights is not None
        self.register_buffer("score_weight", torch.tensor(score_weights or [], dtype=torch.float32),
                             persistent=False)
        # (the mixture's gate name, the output key of its weights): task_<t> becomes the task's name.
        self.gate_outputs = [
            (name, "gates/" + self._gate_label(name)) for name in getattr(mixture, "gate_names", [])
        ]

    def _gate_label(self, gate: str) -> str:
        parts = gate.split("/")
        if parts[-1].startswith("task_"):
            parts[-1] = self.task_names[int(parts[-1][len("task_"):])]
        elif parts[-1] == "shared" and "shared" in self.task_names:
            parts[-1] = "shared_gate"  # a task named "shared" keeps its name
        return "/".join(parts)

    @property
    def history_lengths(self) -> dict[str, int]:
        """{history group: the max_length its inputs are padded to}."""
        return {} if self.histories is None else {name: h.max_length for name, h in self.histories.items()}

    @property
    def output_names(self) -> list[str]:
        """The keys of forward's outputs beyond logits, probabilities and calibrated_probabilities: "score" (with
        scoring weights) and "gates/..." (an expert mixture's gate weights [B, K] per gate)."""
        return (["score"] if self.has_score else []) + [key for _, key in self.gate_outputs]

    @staticmethod
    def input_dim(
        featurizer: nn.Module,
        dense_embeddings: nn.Module | None,
        small_embeddings: nn.Module | None,
        position_debias: nn.Module | None,
        pooled_sparse_dim: int,
        numeric_embeddings: nn.Module | None = None,
        histories: nn.ModuleDict | None = None,
    ) -> int:
        """Width of the concatenated input features."""
        parts = [featurizer, numeric_embeddings, dense_embeddings, small_embeddings, position_debias]
        parts += list(histories.values()) if histories is not None else []
        return sum(p.output_dim for p in parts if p is not None) + pooled_sparse_dim

    __jit_unused_properties__ = ["input_width", "output_names", "history_lengths"]
    __jit_ignored_attributes__ = ["_tower_plan"]

    @property
    def input_width(self) -> int:
        """Width of this model's concatenated input features."""
        return self.input_dim(self.featurizer, self.dense_embeddings, self.small_embeddings, self.position_debias,
                              self.pooled_sparse_dim, self.numeric_embeddings, self.histories)

    @torch.jit.unused
    def towers_grouped(self, x: torch.Tensor) -> bool:
        """Whether this forward runs the towers grouped: always with group_towers, and with "auto" under bf16
        autocast in eager mode (grouped: 1.12-1.26x the demo's bf16 training step on the CPU; level in fp32; slower
        compiled, where inductor already fuses the towers' small operations)."""
        if self.group_towers:
            return True
        if not self.group_towers_in_bf16 or torch.compiler.is_compiling():
            return False
        device = x.device.type
        return torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16

    @torch.jit.unused
    def _tower_logits_grouped_if_chosen(self, x: torch.Tensor, task_inputs: list[torch.Tensor]) -> torch.Tensor:
        """Every head's logit [B, T] in one grouped computation when towers_grouped, else one by one: from x, or
        from the mixture's task inputs."""
        if not self.towers_grouped(x):
            return self._tower_logits(x, task_inputs)
        assert self._tower_plan is not None
        return grouped_logits(list(self.task_modules.values()), self._tower_plan, task_inputs or x, self.training)

    def _tower_logits(self, x: torch.Tensor, task_inputs: list[torch.Tensor]) -> torch.Tensor:
        """Every head's logit [B, T], the heads one by one: from x, or from the mixture's task inputs."""
        if self.mixture is not None:
            return torch.cat([head(h) for head, h in zip(self.task_modules.values(), task_inputs)], dim=1)
        return torch.cat([head(x) for head in self.task_modules.values()], dim=1)

    def forward(
        self,
        continuous: torch.Tensor,
        binary: torch.Tensor,
        discrete: torch.Tensor,
        embeddings: torch.Tensor,
        pooled_sparse: torch.Tensor,
        histories: dict[str, torch.Tensor] | None = None,
        request_of_row: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """request_of_row: None (the history tensors hold one row per candidate row), or [B] int64, each row's
        request, the history tensors then holding one row per request (HistoryEncoder.forward)."""
        parts = [self.featurizer(continuous, binary)]
        if self.numeric_embeddings is not None:
            parts.append(self.numeric_embeddings(continuous))
        if self.dense_embeddings is not None:
            parts.append(self.dense_embeddings(embeddings))
        if self.small_embeddings is not None:
            parts.append(self.small_embeddings(discrete))
        if self.position_debias is not None:
            parts.append(self.position_debias(discrete))
        if self.pooled_sparse_dim > 0:
            parts.append(pooled_sparse.float())
        if self.histories is not None:
            if histories is None:
                raise ValueError(f"the model encodes the histories {list(self.histories.keys())}: pass histories")
            for encoder in self.histories.values():
                # parts[0]: the featurized continuous and binary features, which a candidate token may project.
                parts.append(encoder(histories, request_of_row, parts[0]))
        x = torch.cat(parts, dim=1)
        if self.backbone is not None:
            shared = self.backbone(x)["output"]
            x = torch.cat([x, shared], dim=1) if self.share_partial else shared
        gate_outputs: dict[str, torch.Tensor] = {}
        task_inputs: list[torch.Tensor] = []
        if self.mixture is not None:
            task_inputs, gates = self.mixture(x)
            for name, key in self.gate_outputs:
                gate_outputs[key] = gates[name].float()
        if (self.group_towers or self.group_towers_in_bf16) and not torch.jit.is_scripting():
            logits = self._tower_logits_grouped_if_chosen(x, task_inputs)  # TorchScript runs the towers one by one
        else:
            logits = self._tower_logits(x, task_inputs)
        # Logits and everything after them in float32, also under bf16 autocast.
        logits = logits.float()
        calibrated = calibrate_logits(logits, self.log_ratio)
        out = {
            "logits": logits,
            "probabilities": torch.sigmoid(logits),
            "calibrated_probabilities": calibrated,
        }
        if self.has_score:
            # score = sum_t w_t * p_t over the calibrated probabilities, [B].
            out["score"] = calibrated @ self.score_weight
        out.update(gate_outputs)
        return out
