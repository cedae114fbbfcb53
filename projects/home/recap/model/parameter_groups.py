"""Dense parameters split by tower, for per-tower learning rates."""

from __future__ import annotations

from torch import nn

from projects.home.recap.model.multi_task import MultiTaskRankingModel

SHARED = "shared"


def dense_parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """{"shared": [...], <task>: [...]} of trainable dense parameters: task t's group holds every parameter named
    `...task_modules.<t>....`, "shared" the rest; the large embedding tables' parameters are left out.

    `model` is a MultiTaskRankingModel or anything containing one (ModelAndLoss, DistributedModelParallel)."""
    ranking = next((m for m in model.modules() if isinstance(m, MultiTaskRankingModel)), None)
    if ranking is None:
        raise ValueError(f"{type(model).__name__} contains no MultiTaskRankingModel")
    groups: dict[str, list[nn.Parameter]] = {SHARED: [], **{t: [] for t in ranking.task_names}}
    prefixes = {f"task_modules.{t}.": t for t in ranking.task_names}
    for name, param in model.named_parameters():
        if not param.requires_grad or "large_embeddings." in name or "large_embeddings_unpooled." in name:
            continue
        group = next((t for prefix, t in prefixes.items() if prefix in name), SHARED)
        groups[group].append(param)
    return groups
