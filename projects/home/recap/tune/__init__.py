"""`recap tune`: hyperparameter search over config key paths with Optuna, each trial a real `recap train`.

    space.py    the search-space file (validated) and the --set overrides of sampled values
    objective.py  the trial's value read from a run's periodic evaluation (metrics.json)
    trial.py    one trial: the training subprocess, its evaluations reported to Optuna, pruning
    study.py    the study on disk, parallel workers, resume after an interruption, signals
    report.py   the trials table, trials.json, trials.html and best.yaml
"""
