"""Hyperparameter sweeps over the head: a grid of settings, one nested MLflow run each."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taglens.params import ParamsError, SearchParams, SweepParams, TrainParams
from taglens.progress import progress_bar
from taglens.training.head_fit import HeadFit
from taglens.training.selection import binomial_se, pick

logger = logging.getLogger(__name__)

SWEEP_KEYS = tuple(SweepParams.model_fields)
_TYPES: dict[str, type] = {"epochs": int, "batch_size": int, "hidden_units": int,
                           "learning_rate": float, "dropout": float}  # fmt: skip


@dataclass
class Trial:
    """One setting of a sweep, its fit and the MLflow run it was logged in."""

    setting: dict[str, Any]
    params: TrainParams
    fit: HeadFit
    run_id: str | None = None


def parse_sweep_arg(text: str) -> tuple[str, tuple[Any, ...]]:
    """Parse a CLI `--sweep key=v1,v2` into (key, values).

    Raises:
        ParamsError: unknown key or a value of the wrong type.
    """
    key, sep, values = text.partition("=")
    key = key.strip().removeprefix("train.").removeprefix("sweep.")
    if not sep or key not in _TYPES:
        raise ParamsError(
            f"--sweep {text!r}: expected KEY=V1,V2,... with KEY one of {', '.join(SWEEP_KEYS)}"
        )
    try:
        parsed = tuple(_TYPES[key](v.strip()) for v in values.split(",") if v.strip())
    except ValueError:
        raise ParamsError(f"--sweep {text!r}: {key} takes {_TYPES[key].__name__} values") from None
    if not parsed:
        raise ParamsError(f"--sweep {text!r}: give at least one value")
    return key, parsed


def grid(sweep: SweepParams, extra: Mapping[str, Sequence[Any]] | None = None) -> list[dict]:
    """All combinations of the non-empty sweep lists (CLI values replace params values).

    Returns:
        The settings in a stable order; an empty list when nothing is swept.
    """
    lists = {key: tuple(getattr(sweep, key)) for key in SWEEP_KEYS}
    lists.update({key: tuple(values) for key, values in (extra or {}).items()})
    swept = {key: values for key, values in lists.items() if values}
    if not swept:
        return []
    keys = list(swept)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*swept.values())]


def default_search(search: SearchParams, seed: int) -> list[dict[str, Any]]:
    """The settings the default search tries: random draws (seeded) from three grids.

    Random search covers a grid's important axes with far fewer fits than the full product
    (Bergstra and Bengio, 2012). Logistic regression draws from `logreg_c` x `normalise` x
    `augment`; the kernel head from `kernel_c` x `kernel_gamma` x `augment`; the dense head from
    `hidden_units` x `dropout` x `learning_rate` x `weight_decay` x `normalise` x `augment`.

    Returns:
        Up to `logreg_candidates` logistic, `kernel_candidates` kernel and `dense_candidates`
        dense settings, in that order.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    logreg = [{"head": "logreg", "logreg_c": c, "normalise": norm, "augment": aug}
              for c, norm, aug in itertools.product(search.logreg_c, search.normalise,
                                                    search.augment)]  # fmt: skip
    dense = [{"head": "dense", "hidden_units": units, "dropout": drop, "learning_rate": lr,
              "weight_decay": decay, "normalise": norm, "augment": aug}
             for units, drop, lr, decay, norm, aug in itertools.product(
                 search.hidden_units, search.dropout, search.learning_rate, search.weight_decay,
                 search.normalise, search.augment)]  # fmt: skip

    kernel = [
        {"head": "kernel", "kernel_c": c, "kernel_gamma": gamma, "augment": aug}
        for c, gamma, aug in itertools.product(search.kernel_c, search.kernel_gamma, search.augment)
    ]

    def draw(settings: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
        picks = rng.permutation(len(settings))[: min(count, len(settings))]
        return [settings[i] for i in sorted(picks)]

    # logistic and dense draw before the kernel grid, so their draws do not depend on it
    logreg_draws = draw(logreg, search.logreg_candidates)
    dense_draws = draw(dense, search.dense_candidates)
    return logreg_draws + draw(kernel, search.kernel_candidates) + dense_draws


def apply_setting(train: TrainParams, setting: Mapping[str, Any]) -> TrainParams:
    """A copy of `train` with the setting's values, validated like params.yaml.

    Raises:
        ParamsError: a value is out of range (named by its key).
    """
    from pydantic import ValidationError

    try:
        return TrainParams.model_validate({**train.model_dump(), **setting})
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ParamsError(f"sweep setting train.{key}: {first['msg']}") from None


def setting_name(setting: Mapping[str, Any]) -> str:
    """A short run name for a setting, e.g. `learning_rate=0.01,dropout=0.5`."""
    return ",".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in setting.items())


def simplicity(params: TrainParams) -> tuple:
    """A head setting's sort key for the one-standard-error rule: lower is simpler.

    A linear model before a kernel machine (a convex fit on fixed features) before a network;
    then the stronger regularisation (smaller C, wider kernel, fewer hidden units, more dropout
    and weight decay), raw features before a normalisation, no flip rows before them.
    """
    if params.head == "logreg":
        size: tuple = (0, params.logreg_c)
    elif params.head == "kernel":
        size = (1, params.kernel_c, params.kernel_gamma)
    else:
        size = (2, params.hidden_units, -params.dropout, -params.weight_decay)
    return (*size, params.normalise != "none", params.augment)


def choose_trial(trials: Sequence[Trial], n_val: int, rule: str) -> int:
    """The chosen trial: the best val accuracy (`best`) or by the one-standard-error rule.

    Ties in accuracy go to the lower validation loss.
    """
    best = max(range(len(trials)), key=lambda i: trials[i].fit.score())
    if rule == "best":
        return best
    accuracies = [trial.fit.val_accuracy for trial in trials]
    best_se = binomial_se(accuracies[best], n_val)
    return pick(accuracies, best_se, [simplicity(t.params) for t in trials], rule)


def run_sweep(
    train: TrainParams,
    settings: Sequence[Mapping[str, Any]],
    fit_one: Callable[[TrainParams, Callable[[int, dict[str, float]], None]], HeadFit],
    log_params: Mapping[str, Any] | None = None,
    rule: str = "best",
    n_val: int = 0,
) -> tuple[list[Trial], int]:
    """Fit every setting in its own nested MLflow run under the active run; return the chosen.

    Args:
        train: the base `train` section; each setting overrides some of its keys.
        settings: from `grid`.
        fit_one: fits a head for one TrainParams, calling the given epoch callback.
        log_params: params logged to every child (the flattened params of the parent).
        rule: how the trial is chosen (`choose_trial`): a sweep takes the best, the default
            search `train.search.rule`.
        n_val: validation images, for the one-standard-error rule.

    Returns:
        The trials and the index of the chosen one.
    """
    import mlflow

    if not settings:
        raise ValueError("a sweep needs at least one setting")
    trials: list[Trial] = []
    for setting in progress_bar(settings, desc="sweep", unit="setting"):
        params = apply_setting(train, setting)
        with mlflow.start_run(run_name=setting_name(setting), nested=True) as child:
            merged = dict(log_params or {})
            merged.update({f"train.{key}": value for key, value in setting.items()})
            mlflow.log_params(merged)
            mlflow.set_tag("sweep_setting", setting_name(setting))

            def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
                mlflow.log_metrics(metrics, step=epoch)

            fit = fit_one(params, log_epoch)
            mlflow.log_metrics({"best_val_accuracy": fit.val_accuracy,
                                "best_val_loss": fit.val_loss})
            trials.append(Trial(dict(setting), params, fit, child.info.run_id))
    chosen = choose_trial(trials, n_val, rule)
    logger.info("chosen setting (%s): %s (val_accuracy %.4f; the best was %.4f)", rule,
                setting_name(trials[chosen].setting), trials[chosen].fit.val_accuracy,
                max(trial.fit.val_accuracy for trial in trials))
    return trials, chosen
