import typing
from pathlib import Path

import pytest
import yaml

from distill.config import Eq5Solver, RunConfig, dump_config, load_config, to_dict
from distill.errors import ConfigError
from distillery import DEMO_CONFIG

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_the_defaults_are_a_plain_run_and_the_demo_adds_specialists():
    config = load_config()
    assert config == RunConfig() and config.data.name == "digits"
    assert config.specialists.count == 0 and config.ensemble.size == 1
    assert DEMO_CONFIG.resolve() == (Path(__file__).parents[1] / "configs" / "demo.yaml").resolve()
    assert load_config(DEMO_CONFIG).specialists.count == 3


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_a_shipped_config_loads_and_says_only_what_differs_from_the_defaults(path):
    load_config(path)
    defaults = to_dict(RunConfig())

    def same_as_default(node, default, key=""):
        for name, value in node.items():
            # model specs, data options and bias shifts are replaced whole: stating them in full is not repetition
            if isinstance(value, dict) and name not in ("model", "options", "fixed"):
                yield from same_as_default(value, default[name], f"{key}{name}.")
            elif value == default[name]:
                yield f"{key}{name}"

    assert list(same_as_default(yaml.safe_load(path.read_text()), defaults)) == []


def test_a_choice_is_refused_with_its_allowed_values_read_from_its_type():
    assert typing.get_args(Eq5Solver) == ("em", "gradient")
    with pytest.raises(ConfigError, match="specialists.solver must be em or gradient, got 'newton'"):
        load_config(overrides=["specialists.solver=newton"])


def test_yaml_round_trip(tmp_path):
    config = load_config(overrides=["student.loss.temperature=3.5", "transfer.omit_classes=[3]"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_overrides_reach_nested_keys_and_parse_yaml_values():
    config = load_config(overrides=["student.train.epochs=7", "bias.fixed={3: 3.5}", "transfer.keep_classes=[7, 8]",
                                    "teacher.checkpoint=null"])
    assert config.student.train.epochs == 7
    assert config.bias.fixed == {3: 3.5}
    assert config.transfer.keep_classes == [7, 8]


def test_integer_and_exponent_forms_are_accepted_for_a_float_key():
    assert load_config(overrides=["student.loss.temperature=20"]).student.loss.temperature == 20.0
    assert load_config(overrides=["student.train.lr=1e-3"]).student.train.lr == 0.001


def test_yaml_model_section_replaces_the_default_kwargs(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("teacher:\n  model:\n    name: cnn\n")
    assert load_config(path).teacher.model.kwargs == {}


@pytest.mark.parametrize("override, named", [
    ("student.loss.temprature=2", "student.loss.temprature"),
    ("nonsense=1", "nonsense"),
    ("student.train.epochs=ten", "student.train.epochs"),
    ("student.train.epochs=2.5", "student.train.epochs"),
    ("baseline.enabled=3", "baseline.enabled"),
    ("student.loss.temperature=0", "temperature"),
    ("student.loss.temperature=-1", "temperature"),
    ("student.loss.w_hard=-0.5", "w_hard must be >= 0"),
    ("transfer.fraction=0", "transfer.fraction"),
    ("transfer.fraction=1.5", "transfer.fraction"),
    ("teacher.train.lr=-0.1", "teacher.train.lr"),
    ("teacher.train.schedule=cosine", "teacher.train.schedule"),
    ("seed=-1", "seed"),
    ("seed=²", "seed"),
    ("transfer.omit_classes=3", "transfer.omit_classes"),
    ("student.train=5", "student.train"),
    ("device=tpu", "device"),
    ("no_equals_sign", "KEY=VALUE"),
])
def test_bad_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace("+", r"\+")):
        load_config(overrides=[override])


def test_unknown_key_in_yaml_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("student:\n  loss:\n    temprature: 2\n")
    with pytest.raises(ConfigError, match="student.loss.temprature"):
        load_config(path)


@pytest.mark.parametrize("text, message", [("[1, 2]", "mapping"), ("a: [", "not valid YAML")])
def test_malformed_yaml_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_loss_weights_that_sum_to_zero_are_rejected():
    with pytest.raises(ConfigError, match=r"w_soft \+ w_hard must be > 0"):
        load_config(overrides=["student.loss.w_soft=0", "student.loss.w_hard=0"])


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert load_config(path).seed == 0
