"""The settings table is the one place an option is described: everything else must agree with it."""
from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from bench_fixtures import plugin
from bench_fixtures.config import BenchConfig, ConfigError, PROFILES, resolve
from bench_fixtures.settings import ABSENT, COMPARABLE, PROFILE_NAMES, SETTING, SETTINGS, UNSET

DERIVED = {"profile_reason", "device_reason", "overrides"}  # BenchConfig fields resolve() fills, no row


def test_every_config_field_is_one_row_and_every_row_a_field():
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    assert fields - DERIVED == set(SETTING) and len(SETTING) == len(SETTINGS)


def test_every_profile_default_comes_from_the_table():
    for profile in PROFILE_NAMES:
        cfg = resolve({"profile": profile, "device": "cpu"}, gpu_count=0)
        for row in SETTINGS[1:]:
            if row.matched is UNSET and row.default_for(profile) is not None and row.name not in ("preprocess", "device"):
                # (auto values are resolved: device, preprocess; their rules are resolve()'s)
                assert getattr(cfg, row.name) == row.default_for(profile), (profile, row.name)
        assert set(PROFILES[profile]) == {r.name for r in SETTINGS if profile in r.profiles}


@pytest.mark.parametrize("row", [r for r in SETTINGS if r.flag], ids=lambda r: r.name)
def test_every_option_is_registered_with_the_tables_help(row, pytestconfig):
    """pytest knows the option (the plugin's OPTIONS are the rows), and its help states the defaults."""
    assert pytestconfig.getoption(f"bench_{row.name}") is None  # not given: resolve() applies the profile's
    text = row.help_text()
    assert text.startswith(row.help)
    if row.profiles and row.matched is UNSET:
        assert all(p in text for p in PROFILE_NAMES)
    assert row in plugin.OPTIONS


def test_the_comparability_facts_are_the_tables():
    assert set(COMPARABLE) >= {"profile", "device", "dataset", "epochs", "batch_size", "precision", "replicas"}
    assert all(SETTING[k].comparable for k in ABSENT)  # a setting old runs lack is one the gate compares


def _inside(row):
    """Values ROW's range accepts, at and near its ends."""
    low = row.low if row.low is not None else 0
    high = row.high if row.high is not None else low + 1000
    if row.kind is int:
        return st.integers(int(math.ceil(low)), int(high))
    return st.floats(low, high, exclude_min=row.low_open)


NUMERIC = [r for r in SETTINGS if r.kind in (int, float) and r.flag and r.name not in ("replicas", "worker_memory_limit")]


@hsettings(max_examples=200, deadline=None)
@given(st.data())
def test_a_value_in_the_tables_range_resolves_and_one_outside_names_the_option(data):
    row = data.draw(st.sampled_from(NUMERIC))
    value = data.draw(_inside(row))
    options = {"device": "cpu", "train_size": 0, "batch_size": 1, row.name: value}
    if row.name == "target_accuracy":
        options["eval_every_epoch"] = True
    cfg = resolve(options, gpu_count=0)
    assert getattr(cfg, row.name) == value
    if row.high is not None:
        outside = row.high + (1 if row.kind is int else max(1.0, abs(row.high)) * 1e-6)
        with pytest.raises(ConfigError, match=f"^{row.flag} "):
            resolve({**options, row.name: outside}, gpu_count=0)
