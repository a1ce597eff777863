"""Property-based tests over the whole config surface (Hypothesis): whatever a user hands `distillery run`, in
`--set` or in a YAML file, it ends in exactly one line naming the offending key and exit code 2, or the config is
valid and the run starts. Never a traceback, never a finished-looking run folder.

The keys are generated from the config dataclasses themselves (every key at every depth, plus the arguments of the
models and of the synthetic data set, plus unknown keys), the values from a junk generator (wrong types,
negative, zero, NaN, +-inf, huge, empty and nested containers, malformed YAML). The real CLI entry point runs in
process; only training is replaced, by a stub that marks "validation finished, the run starts".
"""

import dataclasses
import tempfile
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from distill.config import RunConfig
from distillery.cli import main

BASE = ["data.name=synthetic", "data.options={classes: 6, groups: 2, dim: 4, train_per_class: 4, test_per_class: 2}",
        "teacher.model.kwargs={hidden: [4]}", "student.model.kwargs={hidden: [4]}", "cluster.executor=local"]
FREE_FORM = {  # mapping-valued keys and what the code behind them takes
    "model.kwargs": ["hidden", "dropout_input", "dropout_hidden", "max_norm", "channels", "dropout"],
    "data.options": ["classes", "groups", "dim", "train_per_class", "test_per_class", "group_spread", "class_spread",
                     "group_size_exponent", "noise", "seed"],
}


class RunStarted(Exception):
    """Raised by the training stub: the config passed every check."""


def schema_keys(cls=RunConfig, prefix="") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        key, hint = f"{prefix}{item.name}", hints[item.name]
        keys.append(key)
        if dataclasses.is_dataclass(hint):
            keys += schema_keys(hint, f"{key}.")
        for suffix, names in FREE_FORM.items():
            if key.endswith(suffix):
                keys += [f"{key}.{name}" for name in names]
    return keys


KEYS = schema_keys()
SECTIONS = KEYS  # an unknown key may hang below any key, at any depth
NUMBERS = st.one_of(st.integers(-(10**15), 10**15), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1, 2**63, -(2**63), 0.0, -0.0, 1e308, float("nan"), float("inf")]))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=6))
JUNK = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(max_size=4), inner, max_size=2)),
                    max_leaves=6)
MALFORMED = st.sampled_from(["[", "{a:", ": :", "[1, 2", "{x: [}", "'", "!!python/object:os.system ls", "&a *b"])
UNKNOWN_KEYS = st.builds(lambda section, name: f"{section}.{name}", st.sampled_from(SECTIONS),
                         st.from_regex(r"[a-z]{1,8}", fullmatch=True))


def as_yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


@pytest.fixture
def stubbed_training(monkeypatch):
    def started(*args, **kwargs):
        raise RunStarted

    for name in ("train_teachers", "load_teacher", "soft_targets"):
        monkeypatch.setattr(f"distillery.pipeline.{name}", started)
    monkeypatch.setattr("distillery.pipeline.task_resources", lambda *args, **kwargs: None)


def assert_one_line_or_started(args: list[str], key: str | None, capsys) -> None:
    """Run the CLI on `args`: it must start the run, or refuse in one line (naming `key`, when given) with exit 2
    and no metrics.json."""
    capsys.readouterr()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        out = Path(folder) / "run"
        try:
            code = main(["run", "--out", str(out), *args])
        except RunStarted:
            event("valid: the run started")
            return
        finished = (out / "metrics.json").exists()
    error = capsys.readouterr().err
    lines = error.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("distillery: error: "), (args, code, error)
    if key is not None:  # the offending part: the leaf, or the first part of the key that does not exist
        parts = key.split(".")[1:] or [key]
        assert any(part in lines[0] for part in parts), f"the error does not name {key!r}: {lines[0]}"
    assert not finished
    event("refused in one line")


def set_override(data, capsys) -> None:
    """One `--set KEY=VALUE` on top of a tiny valid config."""
    key = data.draw(st.one_of(st.sampled_from(KEYS), UNKNOWN_KEYS), label="key")
    raw = data.draw(st.one_of(JUNK.map(as_yaml), MALFORMED), label="value")
    base = [arg for assignment in BASE for arg in ("--set", assignment)]
    assert_one_line_or_started([*base, "--set", f"{key}={raw}"], key, capsys)


def yaml_file(data, capsys) -> None:
    """A CONFIG file holding a junk value at some key, sometimes a key given twice, sometimes broken YAML."""
    key = data.draw(st.one_of(st.sampled_from(KEYS), UNKNOWN_KEYS), label="key")
    nested = data.draw(JUNK, label="value")
    for part in reversed(key.split(".")):
        nested = {part: nested}
    text = yaml.safe_dump(nested)
    damage = data.draw(st.sampled_from(["none", "duplicate", "malformed"]), label="damage")
    if damage == "duplicate":
        text += text.splitlines()[0].split(":")[0] + ": 1\n"
    elif damage == "malformed":
        text += data.draw(MALFORMED, label="tail") + "\n"
    base = [arg for assignment in BASE for arg in ("--set", assignment)]
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text)
        assert_one_line_or_started([str(path), *base], key if damage == "none" else None, capsys)


FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG = settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(data=st.data())
def test_any_value_at_any_key_is_one_line_or_a_valid_run(stubbed_training, capsys, data):
    set_override(data, capsys)


@FAST
@given(data=st.data())
def test_any_config_file_is_one_line_or_a_valid_run(stubbed_training, capsys, data):
    yaml_file(data, capsys)


@pytest.mark.slow
@LONG
@given(data=st.data())
def test_many_values_at_any_key(stubbed_training, capsys, data):
    set_override(data, capsys)


@pytest.mark.slow
@LONG
@given(data=st.data())
def test_many_config_files(stubbed_training, capsys, data):
    yaml_file(data, capsys)
