"""cluster.yaml is a config Ray's cluster launcher accepts: checked against Ray's own schema and preparation."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    prepared = prepare_config(config)  # what `ray up` does first: defaults filled in, local node types built
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    assert any("pip install" in command and "distillery" in command for command in prepared["setup_commands"])
    assert set(prepared["available_node_types"]) >= {"local.cluster.node"}
