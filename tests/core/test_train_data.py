"""core/train_data.py: epochs read one after the other from a resumable source, a resumed epoch continued from its
position, an empty epoch named, batches drawn without moving the training's random generator. The exact resume of a
whole run: test_train_loop.py."""

import pytest
import torch

from core.train_data import Epochs, next_batch, to_device


class Counting:
    """`per_epoch` batches (epoch, index) per epoch, with a position."""

    def __init__(self, per_epoch: int) -> None:
        self.per_epoch, self.epoch, self.position = per_epoch, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def __iter__(self):
        while self.position < self.per_epoch:
            self.position += 1
            yield self.epoch, self.position - 1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def test_epochs_follow_each_other_and_count_themselves():
    epochs = Epochs(Counting(2), num_epochs=2, rank=0)
    batches = epochs.batches()
    assert next(batches) == (0, 0) and epochs.position() == (0, {"epoch": 0, "position": 1})
    assert list(batches) == [(0, 1), (1, 0), (1, 1)]
    assert epochs.epoch == 2


def test_a_restored_position_continues_its_epoch():
    data = Counting(3)
    epochs = Epochs(data, num_epochs=2, rank=0)
    epochs.epoch = 0
    epochs.restore({"epoch": 0, "position": 2})
    assert list(epochs.batches()) == [(0, 2), (1, 0), (1, 1), (1, 2)]


def test_a_restored_position_at_the_end_of_its_epoch_goes_on_with_the_next():
    epochs = Epochs(Counting(2), num_epochs=2, rank=0)
    epochs.restore({"epoch": 0, "position": 2})
    assert list(epochs.batches()) == [(1, 0), (1, 1)]


def test_an_epoch_without_batches_names_the_epoch_and_the_rank():
    with pytest.raises(RuntimeError, match="the training data yields no batches in epoch 0 on rank 3"):
        next(Epochs(Counting(0), num_epochs=None, rank=3).batches())


def test_drawing_a_batch_leaves_the_random_generator_alone():
    def drawing():
        torch.rand(5)  # as a DataLoader does when its iterator starts
        yield "batch"

    batches = drawing()
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    assert next_batch(batches) == "batch" and next_batch(batches) is None
    assert torch.equal(torch.rand(2), expected)


def test_on_the_cpu_a_batch_stays_where_it_is():
    batch = torch.ones(2)
    assert to_device(batch, torch.device("cpu")) is batch
    assert to_device("not a tensor", torch.device("cuda", 0)) == "not a tensor"
