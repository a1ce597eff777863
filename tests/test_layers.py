"""Imports flow one way: distill <- ensembles <- specialists <- distillery, and Ray stays at the edge.

Every import statement counts, at module level and inside functions: a lazy import still ties the layers.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["distill", "ensembles", "specialists", "distillery"]  # each may import only those before it
# Ray is the fan-out's business: the core and the specialists run without it.
FORBIDDEN = {layer: {*LAYERS[i + 1:], *(["ray"] if layer in ("distill", "specialists") else [])}
             for i, layer in enumerate(LAYERS)}


def imported_packages(source: str) -> set[str]:
    """The top-level packages a module's source imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom):  # a relative import stays in its own package
            found.add("<relative>")
    return found


def violations(layer: str, root: Path = REPO) -> list[str]:
    """'FILE imports PACKAGE' for each forbidden import of the modules in root/layer."""
    return [f"{path.relative_to(root)} imports {package}" for path in sorted((root / layer).glob("*.py"))
            for package in sorted(imported_packages(path.read_text()) & (FORBIDDEN[layer] | {"<relative>"}))]


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer):
    assert len(list((REPO / layer).glob("*.py"))) >= 3, f"is {layer}/ still the layer this test knows?"
    assert violations(layer) == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "lazy.py").write_text(
        "import torch\n\n\ndef fan_out():\n    from ensembles.fanout import train_jobs\n    import ray.util\n")
    assert violations("distill", tmp_path) == ["distill/lazy.py imports ensembles", "distill/lazy.py imports ray"]


def test_importing_the_whole_core_and_the_specialists_loads_no_ray():
    """What the source check cannot see: a third-party import that pulls Ray in."""
    modules = [f"{layer}.{path.stem}" for layer in ("distill", "specialists")
               for path in sorted((REPO / layer).glob("*.py")) if path.stem != "__init__"]
    program = (f"import importlib, json, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
               "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert {"distill", "specialists", "torch"} <= loaded  # the program did import them
    assert loaded & {"ray", "distillery"} == set()
