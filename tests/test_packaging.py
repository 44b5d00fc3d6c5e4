"""The wheel: built from the checkout, installed into a fresh virtual environment, it imports
and runs outside the repository (`lakemine --help`, `lakemine generate`, the DAG settings
finding the package's own job entry), and the dependencies it declares are met by the pinned
set that scripts/setup.sh installs."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (found,) = out.glob("lakemine-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A new virtual environment holding only the wheel; the third-party packages it needs are
    those of the project's .venv, added to its path (copying torch would take minutes)."""
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    py = root / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return root


def test_the_wheel_carries_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(REPO / "libs")) for p in (REPO / "libs" / "lakemine").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert sources <= names, sorted(sources - names)
    assert {"lakemine/core/defaults.yaml", "lakemine/orchestration/log4j2.properties", "lakemine/job.py"} <= names


def test_declared_dependencies_are_met_by_the_pinned_environment(wheel):
    meta = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA")))
    required = [Requirement(line.split(":", 1)[1].strip()) for line in meta.decode().splitlines()
                if line.startswith("Requires-Dist:")]
    runtime = [r for r in required if r.marker is None]
    assert {r.name for r in runtime} >= {"pyspark", "delta-spark", "pyarrow", "torch", "pyyaml", "pyfim"}
    unmet = [f"{r} (installed {version(r.name)})" for r in runtime if not r.specifier.contains(version(r.name), prereleases=True)]
    assert unmet == []


def test_installed_wheel_runs_outside_the_checkout(venv, tmp_path):
    bin_ = venv / "bin"
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path), "LAKEMINE_JARS_DIR": str(REPO / ".jars"),
           "LAKEMINE_SPARK__MASTER": "local[1]", "LAKEMINE_SPARK__DRIVER_MEMORY": "1g"}
    where = subprocess.run([str(bin_ / "python"), "-c", "import lakemine; print(lakemine.__file__)"], cwd=tmp_path,
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(venv)) and "libs" not in Path(where).parts

    shown = subprocess.run([str(bin_ / "lakemine"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shown.returncode == 0 and "fpgrowth" in shown.stdout

    out = tmp_path / "raw"
    made = subprocess.run([str(bin_ / "lakemine"), "generate", "--out", str(out), "--customers", "20", "--days", "40"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    lines = sum(len(p.read_text().splitlines()) - 1 for p in out.glob("online_retail_*.csv"))
    assert manifest["customers"] == 20 and manifest["data_lines"] == lines > 0

    probe = ("import json; from lakemine.orchestration.dags import dag_settings; s = dag_settings(); "
             "print(json.dumps([s.job('clean'), s.common_args('clean'), s.lake, s.py_files]))")
    job, args, lake, py_files = json.loads(subprocess.run(
        [str(bin_ / "python"), "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout)
    assert Path(job).is_file() and job.startswith(str(venv)) and job.endswith("lakemine/job.py")
    assert args[:3] == ["clean", "--lake", str(tmp_path / "lake")] and lake == str(tmp_path / "lake")
    assert py_files.startswith(str(tmp_path / ".cache" / "lakemine" / "dist"))
