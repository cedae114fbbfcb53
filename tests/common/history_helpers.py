"""The history encoders the history tests build, by kind (shared by test_history.py and test_history_options.py)."""

from __future__ import annotations

from torch import nn

from common.sequence_encoders import CandidateIsolatedTransformer, HistoryPooling, TargetAttention

ENCODERS = ["pooling", "target_attention", "target_attention_softmax", "transformer", "transformer_rotary_causal"]


def encoder_module(kind: str, width: int, max_length: int, pooling: str = "sum") -> nn.Module:
    """The encoder of this kind (one of ENCODERS) over tokens `width` wide and histories of max_length items."""
    return {
        "pooling": lambda: HistoryPooling(pooling, width),
        "target_attention": lambda: TargetAttention(width, (8,)),
        "target_attention_softmax": lambda: TargetAttention(width, (8,), softmax=True),
        "transformer": lambda: CandidateIsolatedTransformer(width, num_layers=2, num_heads=2, max_length=max_length),
        "transformer_rotary_causal": lambda: CandidateIsolatedTransformer(
            width, num_layers=1, num_heads=2, positions="rotary", max_length=max_length, causal=True),
    }[kind]()
