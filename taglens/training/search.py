"""Which head setting is trained: sweep grids, the default search, and the best or 1-SE choice.

Every setting is fitted in a nested MLflow run; the train run logs the chosen one's params and
curves (`sweep_logged`) and train.json says what made the model (`setting_report`).

A few hundred validation photos make a search's best score partly luck: one photo in 500 is 0.2
points. The one-standard-error rule (Breiman et al., 1984; Hastie et al., *The Elements of
Statistical Learning*, 7.10) takes the simplest candidate whose score is within one standard
error of the best, which picks noise far less often and costs little when it is wrong. The head
search chooses through `pick` (one accuracy per candidate, a binomial error); the hashtag ranking
search through `pick_paired`, which has every candidate's per-post scores on the same posts and
so measures the error of each candidate's difference from the best: candidates that rank almost
alike are told apart by the posts where they differ, not by the spread of all posts.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from taglens.params import ParamsError, SearchParams, SweepParams, TrainParams
from taglens.progress import progress_bar
from taglens.training.head import HeadFit
from taglens.training.run import TrainConfig

RULES = ("best", "one_se")


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on `n` samples."""
    return float(np.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / max(n, 1)))


def mean_se(per_sample: np.ndarray) -> float:
    """The standard error of the mean of per-sample scores."""
    values = np.asarray(per_sample, np.float64)
    if len(values) < 2:
        return 0.0
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def pick(scores: Sequence[float], best_se: float, complexity: Sequence[Hashable], rule: str) -> int:
    """The index of the chosen candidate.

    Args:
        scores: each candidate's validation score (higher is better).
        best_se: the standard error of the best candidate's score.
        complexity: each candidate's sort key, lower is simpler (compared only among themselves).
        rule: `best`: the highest score (the simpler on ties); `one_se`: the simplest candidate
            within `best_se` of the highest score (the higher score among equally simple ones).

    Raises:
        ValueError: no candidates, or an unknown rule.
    """
    _check(len(scores), rule)
    values = np.asarray(scores, np.float64)
    top = float(values.max())
    margin = best_se if rule == "one_se" else 0.0
    near = [i for i in range(len(values)) if values[i] >= top - margin - 1e-12]
    return _simplest(near, complexity, values)


def pick_paired(per_sample: Sequence[np.ndarray], complexity: Sequence[Hashable], rule: str) -> int:
    """`pick` for candidates scored on the same samples: the error of a paired difference.

    Under `one_se` a candidate qualifies when its mean is below the best's by at most the
    standard error of their per-sample difference.

    Raises:
        ValueError: no candidates, or an unknown rule.
    """
    _check(len(per_sample), rule)
    values = [np.asarray(v, np.float64) for v in per_sample]
    means = np.array([float(v.mean()) if len(v) else 0.0 for v in values])
    best = int(np.argmax(means))

    def qualifies(i: int) -> bool:
        gap = means[best] - means[i]
        if rule == "best" or i == best:
            return gap <= 1e-12
        return gap <= mean_se(values[best] - values[i]) + 1e-12

    near = [i for i in range(len(values)) if qualifies(i)]
    return _simplest(near, complexity, means)


def _check(candidates: int, rule: str) -> None:
    if not candidates:
        raise ValueError("a choice needs at least one candidate")
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {RULES}")


def _simplest(near: list[int], complexity: Sequence[Hashable], scores: np.ndarray) -> int:
    """The simplest of the qualifying candidates; the higher score, then the first, on ties."""
    return min(near, key=lambda i: (complexity[i], -scores[i], i))


logger = logging.getLogger(__name__)

SWEEP_KEYS = tuple(SweepParams.model_fields)
_TYPES: dict[str, type] = {
    "epochs": int,
    "batch_size": int,
    "hidden_units": int,
    "learning_rate": float,
    "dropout": float,
}


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
    `augment` (each fitted at `logreg_learning_rate`); the kernel head from `kernel_c` x
    `kernel_gamma` x `augment`; the dense head from `hidden_units` x `dropout` x
    `learning_rate` x `weight_decay` x `normalise` x `augment`.

    Returns:
        Up to `logreg_candidates` logistic, `kernel_candidates` kernel and `dense_candidates`
        dense settings, in that order.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    logreg = [
        {
            "head": "logreg",
            "logreg_c": c,
            "learning_rate": search.logreg_learning_rate,
            "normalise": norm,
            "augment": aug,
        }
        for c, norm, aug in itertools.product(search.logreg_c, search.normalise, search.augment)
    ]
    dense = [
        {
            "head": "dense",
            "hidden_units": units,
            "dropout": drop,
            "learning_rate": lr,
            "weight_decay": decay,
            "normalise": norm,
            "augment": aug,
        }
        for units, drop, lr, decay, norm, aug in itertools.product(
            search.hidden_units,
            search.dropout,
            search.learning_rate,
            search.weight_decay,
            search.normalise,
            search.augment,
        )
    ]

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
    return ",".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in setting.items()
    )


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
            mlflow.log_metrics(
                {"best_val_accuracy": fit.val_accuracy, "best_val_loss": fit.val_loss}
            )
            trials.append(Trial(dict(setting), params, fit, child.info.run_id))
    chosen = choose_trial(trials, n_val, rule)
    logger.info(
        "chosen setting (%s): %s (val_accuracy %.4f; the best was %.4f)",
        rule,
        setting_name(trials[chosen].setting),
        trials[chosen].fit.val_accuracy,
        max(trial.fit.val_accuracy for trial in trials),
    )
    return trials, chosen


# The train keys that shape each head: train.json's `chosen` shows them for the model's head.
CHOSEN_KEYS = {
    "logreg": ("head", "logreg_c", "learning_rate", "normalise", "augment"),
    "kernel": ("head", "kernel_c", "kernel_gamma", "kernel_landmarks", "augment"),
    "dense": (
        "head",
        "hidden_units",
        "dropout",
        "learning_rate",
        "weight_decay",
        "normalise",
        "augment",
    ),
}


def sweep_logged(
    config: TrainConfig,
    settings: list[dict],
    fit_one: Callable,
    swept: set[str],
    space: str,
    n_val: int,
) -> tuple[HeadFit, TrainParams]:
    """Fit every setting in a child run; log the chosen one's params and curves on this run.

    The default search chooses by `train.search.rule`; a sweep the user asked for takes the best.
    """
    import mlflow

    rule = config.train.search.rule if space == "default" else "best"
    trials, best = run_sweep(config.train, settings, fit_one, config.flat(), rule, n_val)
    fit = trials[best].fit
    best_params = trials[best].params
    best_flat = config.with_train(best_params).flat()
    mlflow.log_params({key: best_flat[key] for key in sorted(swept)})
    accuracies = [trial.fit.val_accuracy for trial in trials]
    mlflow.set_tags(
        {
            "sweep_size": str(len(trials)),
            "search_space": space,
            "selection_rule": rule,
            "best_child_run_id": trials[best].run_id,
            "best_setting": setting_name(trials[best].setting),
        }
    )
    # how far apart the candidates were, beside the error of one val accuracy
    mlflow.log_metrics(
        {
            "search_val_accuracy_max": max(accuracies),
            "search_val_accuracy_min": min(accuracies),
            "search_val_accuracy_se": binomial_se(max(accuracies), n_val),
        }
    )
    for row in fit.history:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    return fit, best_params


def search_note(space: str, searched: set[str]) -> str:
    """The log line saying which train keys a search (or sweep) sets, so params.yaml's are unused.

    Args:
        space: "default" (train.search) or "sweep" (train.sweep or --sweep).
        searched: the `train.*` keys its settings vary.
    """
    keys = ", ".join(sorted(searched))
    if space == "default":
        return (
            f"train.search is on: it varies {keys}, so their params.yaml values (and any "
            "`dvc exp run -S` of them) are not used; set train.search.enabled=false to "
            "train the values in params.yaml"
        )
    return f"the sweep varies {keys}: their params.yaml values are not used"


def setting_report(
    best: TrainParams, space: str | None, searched: set[str], fit: HeadFit
) -> dict[str, Any]:
    """What train.json says about the setting that made the model (`dvc exp show` lists it).

    Args:
        best: the train params the model was fitted with (the best setting of a search).
        space: "default" or "sweep" when settings were searched, None for one setting.
        searched: the `train.*` keys the search varied (empty for one setting).
        fit: the model's fit.

    Returns:
        `search` and `sweep` (which ran), `searched_keys` (comma-separated: DVC's metrics drop
        lists), `chosen` (the head's own keys) and, after a search, `search_val_accuracy`.
    """
    report: dict[str, Any] = {
        "search": space == "default",
        "sweep": space == "sweep",
        "searched_keys": ",".join(sorted(searched)),
        "chosen": {key: getattr(best, key) for key in CHOSEN_KEYS[best.head]},
    }
    if space is not None:
        report["search_val_accuracy"] = fit.val_accuracy
    return report
