"""The package's layers: what Airflow DAG files import stays free of pyspark, torch and delta,
and every module imports only from its own layer or the layers below it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "libs" / "lakemine"
# lowest first; a module may import from its own layer and those before it
LAYERS = ("core", "orchestration", "io", "stages", "mining", "learning", "report", "")
LIGHT = ("core", "orchestration")
HEAVY = ("pyspark", "torch", "delta", "horovod", "petastorm", "py4j")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    if module in ("lakemine", "lakemine.__version__"):  # the package root holds only the version
        return "core"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else ""


def _lakemine_imports(path: Path) -> set[str]:
    """Every `lakemine...` module a file imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lakemine"):
            found.add(node.module)
            if node.module in ("lakemine", *(f"lakemine.{layer}" for layer in LAYERS if layer)):
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lakemine"))
    return found


MODULES = sorted(_module(p) for p in PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == {layer for layer in LAYERS if layer}


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_only_down_the_layers(module):
    path = PACKAGE.parent / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    own = LAYERS.index(_layer(module))
    wrong = sorted(m for m in _lakemine_imports(path) if LAYERS.index(_layer(m)) > own)
    assert wrong == [], f"{module} ({_layer(module) or 'top'}) imports from higher layers: {wrong}"


PROBE = r"""
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:]))))
"""


@pytest.mark.parametrize("module", [m for m in MODULES if _layer(m) in LIGHT])
def test_dag_importable_modules_load_no_spark_torch_or_delta(module):
    """Each module of the light layers, imported alone in a fresh interpreter, loads none of
    the heavy libraries, directly or through its imports."""
    proc = subprocess.run([sys.executable, "-c", PROBE, module, *HEAVY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [], f"{module} loads {proc.stdout.strip()}"


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: the same probe on a Spark-side module reports pyspark."""
    proc = subprocess.run([sys.executable, "-c", PROBE, "lakemine.io.lake", *HEAVY], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"pyspark", "delta"} <= set(json.loads(proc.stdout))
