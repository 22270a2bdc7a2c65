"""The tiny test params are params.yaml with the overrides file laid over it, and nothing else."""

from __future__ import annotations

import pytest
import yaml

from tests.helpers.params import (
    OVERRIDES,
    UnknownOverride,
    tiny_params,
    tiny_params_raw,
    write_tiny_params,
)
from tests.helpers.paths import ROOT


def leaves(mapping: dict, prefix: str = "") -> dict:
    """Every non-mapping value of a nested mapping, by its dotted key."""
    found = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


def test_the_merged_params_differ_from_params_yaml_only_on_the_override_keys():
    # Given params.yaml and the overrides file
    shipped = leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    overrides = leaves(yaml.safe_load(OVERRIDES.read_text()))

    # When they are merged
    merged = leaves(tiny_params_raw())

    # Then every key of params.yaml is there, and exactly the overridden ones changed
    assert merged.keys() == shipped.keys()
    changed = {key for key in merged if merged[key] != shipped[key]}
    assert changed == set(overrides)  # (an override equal to params.yaml would be dead weight)
    assert all(merged[key] == value for key, value in overrides.items())


def test_the_merged_params_are_tiny_and_valid():
    params = tiny_params()
    assert params.model.image_size == 32 and params.model.weights is None
    assert params.train.epochs == 2 and len(params.base.classes) == 10


def test_an_override_params_yaml_lacks_fails_naming_it(tmp_path):
    stale = tmp_path / "overrides.yaml"
    stale.write_text("train:\n  epochs: 2\n  learnig_rate: 0.1\n")
    with pytest.raises(UnknownOverride, match=r"^train\.learnig_rate is overridden but params"):
        tiny_params_raw(overrides=stale)
    stale.write_text("trian:\n  epochs: 2\n")
    with pytest.raises(UnknownOverride, match=r"^trian is overridden"):
        tiny_params_raw(overrides=stale)


def test_written_params_carry_the_changes_and_refuse_unknown_keys(tmp_path):
    path = write_tiny_params(tmp_path / "params.yaml", {"train.epochs": 7, "base.seed": 3})
    written = yaml.safe_load(path.read_text())
    assert written["train"]["epochs"] == 7 and written["base"]["seed"] == 3
    assert written["model"]["image_size"] == 32  # the overrides are still under the changes
    with pytest.raises(UnknownOverride, match=r"train\.epoch is overridden"):
        write_tiny_params(tmp_path / "other.yaml", {"train.epoch": 7})
    assert not (tmp_path / "other.yaml").exists()
