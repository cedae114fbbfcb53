"""training.device resolution: cpu, cuda without a GPU (a clear error), and auto choosing cuda:LOCAL_RANK."""

import logging

import pytest
import torch

from core.distributed import quiet_library_logging, resolve_device


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


@pytest.fixture
def restored_logging():
    names = ("torchrec", "fbgemm_gpu", "torch.distributed", "tensorboard", "torch.fx._symbolic_trace")
    levels = {n: logging.getLogger(n).level for n in names}
    root = logging.getLogger()
    root_level = root.level
    root.setLevel(logging.INFO)  # as the command line sets it
    handler = logging.StreamHandler()
    root.addHandler(handler)
    filters = {h: list(h.filters) for h in root.handlers}
    yield handler
    for h, before in filters.items():
        h.filters[:] = before
    root.removeHandler(handler)
    root.setLevel(root_level)
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def test_library_info_is_quiet_and_project_logs_are_not(restored_logging):
    quiet_library_logging()
    for name in ("torchrec", "fbgemm_gpu", "tensorboard"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    assert logging.getLogger("core.report.tensorboard").isEnabledFor(logging.INFO)

    def record(name, level):
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    # fbgemm logs through the root logger: its INFO is filtered at the handler, its warnings pass, as do ours.
    assert not restored_logging.filter(record("root", logging.INFO))
    assert restored_logging.filter(record("root", logging.WARNING))
    assert restored_logging.filter(record("projects.home.recap.train", logging.INFO))


def test_torchrec_notices_about_data_parallel_tables_are_dropped(restored_logging):
    quiet_library_logging()

    def record(name, message):
        return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)

    assert not restored_logging.filter(record("root", "Sharding spec not found for model.large_embeddings.user"))
    assert not restored_logging.filter(record("torchrec.distributed.utils",
                                              "Sharding Type is data_parallel, caching params will be ignored"))
    assert restored_logging.filter(record("torchrec.distributed.utils", "something else"))
