"""The search-space file of `recap tune`: the base config, the metric, and one distribution per config key path.

    base: census.yaml                  # relative to this file, like `extends`; or `recap tune --config FILE`
    metric: {name: auc, task: mean, dataset: validation, at: final}
    direction: maximize                # default: maximize auc / rce, minimize loss
    fixed: {training.num_epochs: 3}    # --set values every trial gets
    parameters:
      model.backbone.mlp_config.dropout: {type: float, low: 0.0, high: 0.5}
      data.batch_size: {type: categorical, choices: [256, 512, 1024]}

Key paths are those of `recap train --set`, applied by core.config.apply_overrides; every one must name a key of the
resolved base config, so a typo is an error before any trial runs.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from core.config import BaseConfig, ConfigError, apply_overrides, load_config
from projects.home.recap.schema import RecapConfig, load_recap_config

__all__ = [
    "MetricSpec",
    "Parameter",
    "SearchSpace",
    "check_space",
    "load_space",
    "overrides_for",
    "resolve_base",
    "yaml_value",
]

# Optuna stores categorical choices as None, bool, int, float or str; other choices (a list of layer sizes, a
# mapping) are stored as their YAML text and parsed back when the override is written.
_OPTUNA_SCALARS = (type(None), bool, int, float, str)


class MetricSpec(BaseConfig):
    """What a trial is scored on: a metric of a task (or the mean over tasks) on one validation set."""

    name: Literal["auc", "rce", "loss"] = "auc"
    # A task of model.tasks, or `mean` for the plain mean over every task.
    task: str = "mean"
    # A set of data.validation that the periodic evaluation (training.eval_datasets) covers.
    dataset: str = "validation"
    # The trial's value: `final`, the evaluation of the checkpoint the training hands on (the one evaluate, predict
    # and export use: the best one under training.early_stopping, else the last); or `best`, the best over all
    # of the run's evaluations (optimistic when no checkpoint of that step is kept).
    at: Literal["final", "best"] = "final"


class Parameter(BaseConfig):
    """One dimension: a float or int range (optionally log-uniform or stepped) or a list of choices."""

    type: Literal["float", "int", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = Field(default=None, gt=0)
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self):
        if self.type == "categorical":
            given = [name for name in ("low", "high", "step") if getattr(self, name) is not None]
            if given or self.log:
                raise ValueError(f"a categorical parameter takes only `choices` (got {', '.join(given or ['log'])})")
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty list of `choices`")
            texts = [yaml_value(c) for c in self.choices]
            if len(set(texts)) != len(texts):
                raise ValueError(f"choices must be distinct, got {self.choices}")
            return self
        if self.choices is not None:
            raise ValueError(f"`choices` is for type categorical, not {self.type} (use low and high)")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.type == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and not float(value).is_integer():
                    raise ValueError(f"{name} of an int parameter must be a whole number, got {value}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (got {self.low})")
        if self.log and self.step is not None and not (self.type == "int" and self.step == 1):
            raise ValueError("log: true cannot be combined with a step (Optuna samples log ranges continuously)")
        return self

    def suggest(self, trial: Any, name: str) -> Any:
        """Sample this dimension on an Optuna trial (the value Optuna stores)."""
        if self.type == "float":
            return trial.suggest_float(name, float(self.low), float(self.high), log=self.log,
                                       step=None if self.step is None else float(self.step))
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_categorical(name, self.stored_choices())

    def stored_choices(self) -> list[Any]:
        """The choices as Optuna stores them: scalars as they are, anything else as its YAML text."""
        assert self.choices is not None
        if all(isinstance(c, _OPTUNA_SCALARS) for c in self.choices):
            return list(self.choices)
        return [yaml_value(c) for c in self.choices]

    def config_value(self, stored: Any) -> Any:
        """The config value of a value Optuna stored for this dimension."""
        if self.type == "categorical" and not all(isinstance(c, _OPTUNA_SCALARS) for c in self.choices or []):
            return yaml.safe_load(stored)
        return stored


class SearchSpace(BaseConfig):
    """A `recap tune --space` file."""

    base: str | None = None
    metric: MetricSpec = MetricSpec()
    direction: Literal["maximize", "minimize"] | None = None
    fixed: dict[str, Any] = {}
    parameters: dict[str, Parameter] = Field(min_length=1)

    @model_validator(mode="after")
    def _no_overlap(self):
        both = sorted(set(self.fixed) & set(self.parameters))
        if both:
            raise ValueError(f"{', '.join(both)}: both in `fixed` and in `parameters`; keep one")
        return self

    @property
    def resolved_direction(self) -> str:
        """maximize for auc and rce, minimize for loss, unless `direction` says otherwise."""
        if self.direction is not None:
            return self.direction
        return "minimize" if self.metric.name == "loss" else "maximize"


def yaml_value(value: Any) -> str:
    """`value` as the one-line YAML text that `--set KEY=TEXT` parses back to the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def overrides_for(values: dict[str, Any]) -> list[str]:
    """--set strings (KEY.PATH=VALUE) of config values keyed by key path."""
    return [f"{key}={yaml_value(value)}" for key, value in values.items()]


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Read and validate a search-space file; ConfigError names the file and the key."""
    return load_config(path, SearchSpace)


def resolve_base(space: SearchSpace, space_path: str | os.PathLike, config: str | None) -> Path:
    """The base experiment file: --config if given, else `base` (relative to the space file, as `extends` is)."""
    if config is not None:
        base = Path(config)
        where = "--config"
    elif space.base is not None:
        base = Path(space.base)
        if not base.is_absolute():
            base = Path(space_path).parent / base
        where = f"{space_path}: base"
    else:
        raise ConfigError(f"{space_path}: no base config: set `base:` in the file or pass --config")
    if not base.is_file():
        raise ConfigError(f"{where}: {base} not found")
    return base


_PROBE = "__recap_tune_probe__"


def _added_key(before: Any, after: Any, path: tuple[str, ...] = ()) -> tuple[tuple[str, ...], Any] | None:
    """The first key present in `after` but not in `before` (its path, and the mapping it was added to in `before`)."""
    if isinstance(after, dict):
        if not isinstance(before, dict):
            key = next(iter(after), "")
            return (*path, str(key)), before
        for key, value in after.items():
            if key not in before:
                return (*path, str(key)), before
            found = _added_key(before[key], value, (*path, str(key)))
            if found is not None:
                return found
    elif isinstance(after, list) and isinstance(before, list):
        for i, (b, a) in enumerate(zip(before, after)):
            found = _added_key(b, a, (*path, str(i)))
            if found is not None:
                return found
    return None


def _check_key_path(key: str, resolved: dict, where: str, base: Path) -> None:
    # The override is applied by the same function `--set` uses, to the resolved config (defaults filled in), with
    # a probe value: a key path that names an existing key adds none.
    try:
        probed = apply_overrides(copy.deepcopy(resolved), [f"{key}={_PROBE}"])
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    added = _added_key(resolved, probed)
    if added is None:
        return
    path, parent = added
    message = f"{where}: {base} has no key {'.'.join(path)!r}"
    if isinstance(parent, dict) and parent:
        hint = difflib.get_close_matches(path[-1], [str(k) for k in parent], n=1, cutoff=0.6)
        message += f"; did you mean {'.'.join((*path[:-1], hint[0]))!r}?" if hint else \
            f"; keys there: {', '.join(sorted(str(k) for k in parent))}"
    elif parent is None:
        message += f" ({'.'.join(path[:-1])} is not set there: set it in the base or under `fixed` first)"
    raise ConfigError(message)


def check_space(space: SearchSpace, space_path: str | os.PathLike, base: Path) -> RecapConfig:
    """Check the space against its base before any trial: every key path exists, the metric's task and dataset are
    evaluated periodically. Returns the base config with `fixed` applied; ConfigError names the key."""
    resolved = load_recap_config(base).model_dump(mode="json")
    for key in space.fixed:
        _check_key_path(key, resolved, f"{space_path}: fixed.{key}", base)
    try:
        config = load_recap_config(base, overrides_for(space.fixed))
    except ConfigError as exc:
        raise ConfigError(f"{space_path}: `fixed` makes the base config invalid:\n{exc}") from None
    # Against the config with `fixed` applied: it may set a section that a parameter's key path goes through.
    resolved = config.model_dump(mode="json")
    for key in space.parameters:
        _check_key_path(key, resolved, f"{space_path}: parameters.{key}", base)
    metric = space.metric
    tasks = list(config.model.tasks)
    if metric.task != "mean" and metric.task not in tasks:
        raise ConfigError(f"{space_path}: metric.task: {metric.task!r} is not a task of {base} "
                          f"(model.tasks: {', '.join(tasks)}; or `mean`)")
    if metric.dataset not in config.data.validation:
        raise ConfigError(f"{space_path}: metric.dataset: {metric.dataset!r} is not a set of {base} "
                          f"(data.validation: {', '.join(config.data.validation) or 'none'})")
    if config.training.eval_every_n is None:
        raise ConfigError(f"{space_path}: {base}: training.eval_every_n is not set: trials are scored and pruned "
                          "on the periodic evaluation (set it in the base or under `fixed`)")
    periodic = config.training.eval_datasets or list(config.data.validation)
    if metric.dataset not in periodic:
        raise ConfigError(f"{space_path}: metric.dataset: {metric.dataset!r} is not in {base}'s "
                          f"training.eval_datasets ({', '.join(periodic)}), so training never evaluates it")
    return config
