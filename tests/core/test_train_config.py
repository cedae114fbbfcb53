"""core/train_config.py: the number of optimizer steps a training config takes (its validation is covered where
the config is loaded: test_config.py, test_storage.py)."""

from core.train_config import TrainingConfig, total_train_steps


def _config(**values) -> TrainingConfig:
    return TrainingConfig(save_dir="runs/x", **values)


def test_total_train_steps_is_the_step_budget_or_the_epochs_over_the_accumulation():
    assert total_train_steps(_config(num_train_steps=7), steps_per_epoch=100) == 7
    assert total_train_steps(_config(num_epochs=2), steps_per_epoch=5) == 10
    assert total_train_steps(_config(num_epochs=2, gradient_accumulation_steps=3), steps_per_epoch=5) == 4  # ceil
    assert total_train_steps(_config(num_epochs=2), steps_per_epoch=None) is None
