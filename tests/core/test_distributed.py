"""training.device resolution: cpu, cuda without a GPU (a clear error), and auto choosing cuda:LOCAL_RANK."""

import pytest
import torch

from core.distributed import resolve_device


def test_cpu_is_cpu_on_any_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_a_gpu_names_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="training.device is cuda but no GPU is visible"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_with_a_gpu_takes_the_local_ranks_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 2)
