"""The training process keeps freed memory (distill/memory.py): re-used buffers take no page faults."""

import platform
import subprocess
import sys

import pytest

# Five steps of warm-up, then page faults per step of an 800-800 MLP's SGD step at batch 128, as train() runs it.
STEPS = """
import resource, sys, torch
from distill.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
model = torch.nn.Sequential(torch.nn.Linear(784, 800), torch.nn.ReLU(), torch.nn.Linear(800, 800), torch.nn.ReLU(),
                            torch.nn.Linear(800, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=True)
x, y = torch.rand(128, 784), torch.randint(0, 10, (128,))
for step in range(25):
    if step == 5:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_step(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    return float(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc thresholds are glibc's (mallopt)")
def test_retained_memory_removes_the_page_faults_of_each_step():
    # Not zero either way: the shared host's memory reclaim adds 0-60 faults per step to any process at times, and
    # more in bursts (one failed this test once in a full unit-tier run): the best of three runs rides them out.
    # glibc alone takes 1,300-2,700 per step here, the reason the module exists.
    default, retained = _faults_per_step("default"), min(_faults_per_step("retain") for _ in range(3))
    assert 10 * max(retained, 1) < default
