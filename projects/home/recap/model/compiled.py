"""training.compile for the ranker: the DenseRankingModel (and with dense+loss the loss) compiled in place.

The sparse side (id transform, the torchrec EmbeddingBagCollection or its sharded form under
DistributedModelParallel, the padding of jagged histories) stays eager: MultiTaskRankingModel runs it and hands the
DenseRankingModel plain tensors, and only that call is compiled. See core/compile.py for shapes and recompiles.
"""

from __future__ import annotations

from torch import nn

from core.compile import compile_function, compile_module
from core.log import get_logger
from core.train_config import CompileConfig
from projects.home.recap.model.dense import DenseRankingModel
from projects.home.recap.model.loss import ModelAndLoss, multi_task_bce

logger = get_logger(__name__)


def compile_model(model: nn.Module, config: CompileConfig) -> nn.Module:
    """Compile, in place, the dense part of `model` (a ModelAndLoss or MultiTaskRankingModel, possibly inside
    DistributedModelParallel) as `config` says; returns `model` (its state_dict keys unchanged). A no-op when off."""
    if config.target == "off":
        return model
    dense = [m for m in model.modules() if isinstance(m, DenseRankingModel)]
    if not dense:
        raise ValueError(f"training.compile.target {config.target}: the model holds no DenseRankingModel")
    losses = [m for m in model.modules() if isinstance(m, ModelAndLoss)]
    if config.target == "dense+loss" and not losses:
        raise ValueError("training.compile.target dense+loss: the model has no loss (not a ModelAndLoss)")
    for module in dense:
        compile_module(module, config.mode, config.backend, config.cpp_wrapper)
    if config.target == "dense+loss":
        for module in losses:
            module.loss_function = compile_function(multi_task_bce, config.mode, config.backend,
                                                      config.cpp_wrapper)
    logger.info("torch.compile (%s, mode %s, backend %s%s) of the dense model%s; the sparse lookup runs eagerly. The "
                "first steps compile (logged with their time)", config.target, config.mode, config.backend,
                ", C++ wrapper" if config.cpp_wrapper else "",
                " and the loss" if config.target == "dense+loss" else "")
    return model


def uncompile_model(model: nn.Module) -> nn.Module:
    """Undo compile_model in place: the dense model and the loss run eagerly again (benchmarks switch between
    the two on one model); returns `model`."""
    for module in model.modules():
        if isinstance(module, DenseRankingModel):
            module._compiled_call_impl = None  # what nn.Module.compile set
        elif isinstance(module, ModelAndLoss):
            module.loss_function = multi_task_bce
    return model
