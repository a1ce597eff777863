"""What each Ray task reserves: the configured CPUs and GPUs, or an equal share of the cluster."""

import pytest

from distill.config import ClusterConfig
from distill.errors import ConfigError
from ensembles.fanout import task_resources

TWO_CPUS = [{"CPU": 2.0}]
THREE_NODES = [{"CPU": 0.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]


@pytest.mark.parametrize("nodes, tasks, cpus", [
    (TWO_CPUS, 1, 2.0),      # one teacher alone gets the whole machine, not one thread of it
    (TWO_CPUS, 10, 1.0),     # ten members share it, at least one CPU each
    (TWO_CPUS, 3, 1.0),      # shares are whole CPUs: torch runs that many threads
    (THREE_NODES, 1, 4.0),   # never more than one node has: a task runs on one node
    (THREE_NODES, 2, 4.0),
    (THREE_NODES, 4, 2.0),
])
def test_unset_num_cpus_is_an_equal_share(nodes, tasks, cpus):
    assert task_resources(ClusterConfig(), tasks, nodes) == (cpus, 0.0)


def test_configured_resources_are_kept():
    assert task_resources(ClusterConfig(num_cpus=0.5, num_gpus=0.25), 10, THREE_NODES) == (0.5, 0.25)


@pytest.mark.parametrize("cluster, message", [
    (ClusterConfig(num_cpus=8), "cluster.num_cpus=8 per model, but the largest Ray node has 4"),
    (ClusterConfig(num_gpus=2), "cluster.num_gpus=2 per model, but the largest Ray node has 1"),
])
def test_a_request_no_node_can_meet_is_refused(cluster, message):
    with pytest.raises(ConfigError, match=message):
        task_resources(cluster, 1, THREE_NODES)
