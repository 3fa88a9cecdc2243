"""docker-compose.yml, the Dockerfile and deploy/ (issue 8, docs/deployment.md).

``docker-compose config`` must pass with Debian's ``docker-compose`` package (1.29.2) even
where no Docker engine runs. That program is PyPI's ``docker-compose==1.29.2``; its pinned
dependencies (PyYAML < 6, jsonschema < 4, ...) clash with ours, so it is installed once into
its own virtual environment under ``.tools/compose-venv/`` (git-ignored), under a lock, and
reused. The same environment holds ``promql-parser`` to parse the dashboard's queries and
provides PyYAML to read the YAML files (the project does not depend on PyYAML). When that
install fails (no registry), the tests fail under ``CI=true`` and are skipped otherwise.

What is checked without an engine:

- the file validates, and every service has a healthcheck and a restart policy;
- every service built from the Dockerfile runs a real ``ledger`` subcommand with real flags,
  is configured only by environment variables the code reads, and its healthcheck runs a
  command the image installs; the other images' healthchecks use tools those images ship;
- Prometheus scrapes every ledger process's metrics port; the Grafana dashboard's queries
  parse and use only metrics and labels the ledger exports; the NATS configuration is valid
  for nats-server, with JetStream file storage and ``sync_interval: always``;
- the alerts (issue 17, ``deploy/prometheus/alerts.yml``) load: ``promtool check config``
  and ``check rules`` pass, ``promtool test rules`` passes on ``alerts_test.yml``, where
  every alert has a case that fires and one that stays silent (and a copy of the rules made
  to never fire, or always, fails them), and the rules use only exported metrics and labels.
  promtool is Debian's ``prometheus`` package (``testbed/prometheus.py`` installs it);
- a rehearsal runs the stack's ledger processes from the compose file's own commands and
  environment (hosts and ports mapped to this machine) over a real PostgreSQL and a
  nats-server started from ``deploy/nats/nats.conf``, and each compose healthcheck passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.local_nats import nats_server_binary
from testbed.processes import free_tcp_port, launched
from testbed.prometheus import PrometheusBinaries

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY = REPO / "deploy"
HEALTHCHECK_SCRIPT = DEPLOY / "healthcheck.py"

TOOLS_VENV = REPO / ".tools" / "compose-venv"
COMPOSE_VERSION = "1.29.2"
TOOL_REQUIREMENTS = (f"docker-compose=={COMPOSE_VERSION}", "promql-parser==0.11.0")
# PyYAML 5.4.1 has no wheel for Python 3.11, and its sdist does not build with Cython 3.
# The constraints reach pip's isolated build environments too (PIP_CONSTRAINT). docker 5.0.3
# is Debian bookworm's python3-docker, the one its docker-compose 1.29.2 runs with.
TOOL_CONSTRAINTS = ("cython<3", "PyYAML==5.4.1", "jsonschema==3.2.0", "docker==5.0.3")
INSTALL_TIMEOUT_SECONDS = 420

LEDGER_SERVICES = ("api-1", "api-2", "projections", "ingest")
SERVICES = ("postgres", "nats", *LEDGER_SERVICES, "prometheus", "grafana")
# Executables the third-party images ship (their healthchecks may use only these). The
# alpine and busybox based images have busybox's wget; none of them has curl for sure.
IMAGE_TOOLS = {
    "postgres": {"pg_isready", "psql"},
    "nats": {"nats-server", "wget"},  # the -alpine variant; the scratch one has no shell
    "prom/prometheus": {"prometheus", "promtool", "wget"},
    "grafana/grafana": {"grafana", "grafana-cli", "wget"},
}
# Labels Prometheus adds to every series of a target (deploy/prometheus/prometheus.yml).
TARGET_LABELS = {"job", "instance", "component"}
# What the issue lists for the dashboard, by the metric that shows it and the labels some
# query of it must group or select by.
DASHBOARD_FIGURES: dict[str, tuple[str, set[str]]] = {
    "ingest batch time (movement to ledger)": ("ledger_ingest_batch_seconds_bucket", {"lane"}),
    "ingest outcomes and dead letters": ("ledger_ingest_messages_total", {"outcome"}),
    "projection lag": ("ledger_projection_lag_events", set()),
    "reservation outcomes": ("ledger_reservations_total", {"outcome"}),
    "RPC latency": ("ledger_rpc_duration_seconds_bucket", {"method"}),
    "movement-to-ledger lag by source": ("ledger_movement_lag_seconds_bucket", {"source"}),
    "exception counts by type": ("ledger_exceptions_published_total", {"type"}),
    "API errors by reason": ("ledger_rpc_errors_total", {"reason"}),
    "dead letters by source and reason": ("ledger_dead_letters_total", {"source", "reason"}),
    "reservation outcomes by channel": ("ledger_reservations_total", {"channel", "outcome"}),
}

pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_SECONDS + 180)


# ---- the tool environment -------------------------------------------------------------------


class ToolUnavailable(RuntimeError):
    """docker-compose (or its environment) could not be installed."""


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """Serialize installs: several test runs may share one checkout."""
    import fcntl

    TOOLS_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_VENV.parent / "compose-venv.install.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _wanted() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "requirements": list(TOOL_REQUIREMENTS),
        "constraints": list(TOOL_CONSTRAINTS),
    }


def _run_tool(command: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired as error:
        raise ToolUnavailable(f"`{shlex.join(command)}` timed out after {timeout} s") from error


def install_tools(venv: Path = TOOLS_VENV) -> Path:
    """The tool environment's directory, installed first if it is missing or stale."""
    marker = venv / "ledger-tools.json"
    compose = venv / "bin" / "docker-compose"
    with _install_lock():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(marker.read_text(encoding="utf-8")) == _wanted() and compose.exists():
                return venv
        shutil.rmtree(venv, ignore_errors=True)
        created = _run_tool([sys.executable, "-m", "venv", str(venv)], 120)
        if created.returncode != 0:
            raise ToolUnavailable(f"python -m venv {venv} failed:\n{created.stderr[-2000:]}")
        constraints = venv / "constraints.txt"
        constraints.write_text("\n".join(TOOL_CONSTRAINTS) + "\n", encoding="utf-8")
        command = [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            *TOOL_REQUIREMENTS,
        ]
        environment = {**os.environ, "PIP_CONSTRAINT": str(constraints)}
        result = _run_tool(command, INSTALL_TIMEOUT_SECONDS, env=environment)
        version = _run_tool([str(compose), "version", "--short"], 60) if compose.exists() else None
        if result.returncode != 0 or version is None or version.stdout.strip() != COMPOSE_VERSION:
            output = "\n".join(
                line
                for line in (result.stderr or result.stdout).splitlines()
                if not line.startswith("WARNING: Location")
            )
            shutil.rmtree(venv, ignore_errors=True)
            raise ToolUnavailable(
                f"`{shlex.join(command)}` (PIP_CONSTRAINT={constraints}) failed with status"
                f" {result.returncode}; is PyPI reachable?\n{output[-3000:]}"
            )
        marker.write_text(json.dumps(_wanted()), encoding="utf-8")
        return venv


_YAML_TO_JSON = """
import json, sys, yaml
print(json.dumps([yaml.safe_load(open(p, encoding="utf-8")) for p in sys.argv[1:]]
                 if len(sys.argv) > 1 else yaml.safe_load(sys.stdin)))
"""

_PROMQL = """
import json, sys
import promql_parser as p

def analyse(expr):
    try:
        tree = p.parse(expr)
    except Exception as error:
        return {"error": str(error)}
    metrics, labels = set(), set()

    def visit(node):
        if isinstance(node, p.VectorSelector):
            if node.name:
                metrics.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    metrics.add(matcher.value)
                else:
                    labels.add(matcher.name)
        modifier = getattr(node, "modifier", None)
        if isinstance(modifier, p.AggModifier):
            labels.update(modifier.labels)
        elif isinstance(modifier, p.BinModifier):
            if modifier.matching is not None:
                labels.update(modifier.matching.labels)
            labels.update(modifier.group_labels or [])

    p.walk(tree, pre_visit=visit)
    return {"metrics": sorted(metrics), "labels": sorted(labels)}

print(json.dumps([analyse(expr) for expr in json.load(sys.stdin)]))
"""


@dataclasses.dataclass(frozen=True)
class Tools:
    venv: Path

    @property
    def compose(self) -> Path:
        return self.venv / "bin" / "docker-compose"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def _python(self, script: str, *args: str, stdin: str = "") -> Any:
        result = subprocess.run(
            [str(self.python), "-c", script, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def load_yaml(self, path: Path) -> Any:
        return self._python(_YAML_TO_JSON, str(path))[0]

    def parse_yaml(self, text: str) -> Any:
        return self._python(_YAML_TO_JSON, stdin=text)

    def promql(self, expressions: list[str]) -> list[dict[str, Any]]:
        return self._python(_PROMQL, stdin=json.dumps(expressions))

    def run_compose(self, *args: str, env_file: Path) -> subprocess.CompletedProcess:
        # A clean environment and an empty env file: neither the caller's variables nor a
        # developer's .env change what is validated (the file's own defaults are).
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        environment["HOME"] = str(env_file.parent)
        return subprocess.run(
            [str(self.compose), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
            cwd=REPO,
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def tools() -> Tools:
    try:
        return Tools(install_tools())
    except ToolUnavailable as error:
        message = f"docker-compose {COMPOSE_VERSION} is not available: {error}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def compose_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("", encoding="utf-8")
    return env_file


@pytest.fixture(scope="module")
def compose_run(tools: Tools, compose_env_file: Path) -> subprocess.CompletedProcess:
    return tools.run_compose("config", env_file=compose_env_file)


@pytest.fixture(scope="module")
def compose(tools: Tools, compose_run: subprocess.CompletedProcess) -> dict[str, Any]:
    """The normalized configuration ``docker-compose config`` prints (interpolated, merged)."""
    assert compose_run.returncode == 0, compose_run.stderr
    return tools.parse_yaml(compose_run.stdout)


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _is_ledger_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and Path(build.get("context", "")).resolve() == REPO


def _image_repository(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _help(*subcommand: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", *subcommand, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"ledger {' '.join(subcommand)} --help: {result.stderr}"
    return result.stdout


_READS_VARIABLE = re.compile(
    r"""(?:environ(?:\.get)?|getenv)\s*[\[(]\s*["'](LEDGER_[A-Z0-9_]+)["']"""
)


def _variables_the_code_reads() -> set[str]:
    names: set[str] = set()
    sources = [HEALTHCHECK_SCRIPT]
    for package in ("entrypoints", "ledger", "ingest", "projections"):
        sources.extend((REPO / package).rglob("*.py"))
    for source in sources:
        text = source.read_text(encoding="utf-8")
        names.update(_READS_VARIABLE.findall(text))
    return names


def _load_healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("ledger_healthcheck", HEALTHCHECK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- the compose file -----------------------------------------------------------------------


def test_docker_compose_config_validates(
    tools: Tools, compose_env_file: Path, compose_run: subprocess.CompletedProcess
) -> None:
    assert compose_run.returncode == 0, compose_run.stderr
    # Every variable has a default: nothing is silently interpolated as "".
    assert "is not set" not in compose_run.stderr, compose_run.stderr
    quiet = tools.run_compose("config", "--quiet", env_file=compose_env_file)
    assert quiet.returncode == 0, quiet.stderr
    listed = tools.run_compose("config", "--services", env_file=compose_env_file)
    assert sorted(listed.stdout.split()) == sorted(SERVICES)


def test_the_validator_rejects_what_it_should(tools: Tools, tmp_path: Path) -> None:
    """The installed docker-compose really validates (a typo in a healthcheck fails)."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        'services:\n  a:\n    image: busybox\n    healthcheck:\n      tset: ["CMD", "true"]\n',
        encoding="utf-8",
    )
    env_file = tmp_path / "empty.env"
    env_file.write_text("", encoding="utf-8")
    result = subprocess.run(
        [str(tools.compose), "--env-file", str(env_file), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "tset" in result.stderr


def test_every_service_has_a_healthcheck_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), (name, check["test"])
        for key in ("interval", "timeout", "retries", "start_period"):
            assert key in check, f"{name}: healthcheck without {key}"
        assert service.get("restart") == "unless-stopped", f"{name}: restart policy"


def test_services_wait_for_the_health_of_what_they_need(compose: dict[str, Any]) -> None:
    services = _services(compose)
    needs = {
        "api-1": {"postgres"},
        "api-2": {"postgres"},
        "projections": {"postgres"},
        "ingest": {"postgres", "nats"},
        "grafana": {"prometheus"},
    }
    for name, wanted in needs.items():
        depends = services[name].get("depends_on", {})
        assert set(depends) == wanted, (name, depends)
        for target, how in depends.items():
            assert how.get("condition") == "service_healthy", (name, target, how)
            assert services[target].get("healthcheck"), target


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes (``docker-compose config`` prints the short
    syntax ``SOURCE:TARGET[:MODE]``)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        mounts[target] = source
    return mounts


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    services = _services(compose)
    state = {
        "postgres": "/var/lib/postgresql/data",
        "nats": "/data",
        "prometheus": "/prometheus",
        "grafana": "/var/lib/grafana",
    }
    for name, target in state.items():
        source = _mounts(services[name]).get(target)
        assert source in compose["volumes"], f"{name}: {target} is not on a named volume"
    for name, service in services.items():
        for target, source in _mounts(service).items():
            if source.startswith("/"):  # bind mounts: configuration, read-only, in deploy/
                assert Path(source).is_relative_to(DEPLOY), (name, source)
                assert str(service["volumes"]).count(f"{target}:ro") == 1, (name, target)


def test_ledger_services_run_real_subcommands_with_real_flags(compose: dict[str, Any]) -> None:
    services = _services(compose)
    ledger_services = {n for n, s in services.items() if _is_ledger_image(s)}
    assert ledger_services == set(LEDGER_SERVICES)
    assert ("ENTRYPOINT", '["ledger"]') in _final_stage()
    subcommands = {}
    for name in sorted(ledger_services):
        service = services[name]
        assert "entrypoint" not in service, f"{name} overrides the image's `ledger` entrypoint"
        command = service["command"]
        assert isinstance(command, list) and command, name
        words = [word for word in command if not word.startswith("-")]
        # `ledger projections run`: the action is a positional argument of the subcommand.
        help_text = _help(*words)
        for word in command:
            if word.startswith("--"):
                flag = word.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
                    f"{name}: `ledger {' '.join(words)}` has no {flag}"
                )
        subcommands[name] = tuple(command)
    assert subcommands["api-1"] == subcommands["api-2"] == ("serve",)
    assert subcommands["projections"] == ("projections", "run")
    assert subcommands["ingest"] == ("ingest",)
    assert "run" in _help("projections")


def test_ledger_services_are_configured_only_by_variables_the_code_reads(
    compose: dict[str, Any],
) -> None:
    from ledger.config import eventsourcing_env
    from ledger.metrics.endpoint import parse_listen

    read = _variables_the_code_reads()
    assert {"LEDGER_DATABASE_URL", "LEDGER_LISTEN", "LEDGER_NATS_URL"} <= read  # the scan works
    services = _services(compose)
    for name in LEDGER_SERVICES:
        service = services[name]
        # Configuration only through the environment: no flags on the command line.
        assert not [w for w in service["command"] if w.startswith("-")], name
        environment = service["environment"]
        unknown = sorted(set(environment) - read)
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"
        assert eventsourcing_env(environment["LEDGER_DATABASE_URL"])["POSTGRES_HOST"] == "postgres"
        parse_listen(environment["LEDGER_METRICS_LISTEN"])
    api = [services[name]["environment"] for name in ("api-1", "api-2")]
    assert api[0] == api[1], "the replicas must be configured alike"
    assert api[0]["LEDGER_PROJECTIONS"] == "external"
    assert api[0]["LEDGER_PAGE_TOKEN_SECRET"], "replicas must share a page token secret"
    host, port = parse_listen(api[0]["LEDGER_LISTEN"])
    assert host == "0.0.0.0"
    # Published on the host: the container port is the one the replica listens on.
    for name in ("api-1", "api-2"):
        # docker-compose config prints HOST_IP:HOST_PORT:CONTAINER_PORT/PROTOCOL.
        published = [str(p).split("/")[0].rsplit(":", 1)[1] for p in services[name]["ports"]]
        assert published == [str(port)], name
        assert str(services[name]["ports"][0]).startswith("127.0.0.1:"), "loopback by default"
    assert services["ingest"]["environment"]["LEDGER_NATS_URL"] == "nats://nats:4222"


def test_ledger_services_start_with_the_compose_environment(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replicas' settings pass the service's own checks (exposure, projections mode)."""
    from entrypoints.grpc.transport import check_exposure
    from ledger.config import Settings, projections_in_process

    for key in [k for k in os.environ if k.startswith("LEDGER_")]:
        monkeypatch.delenv(key)
    for key, value in _services(compose)["api-1"]["environment"].items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    check_exposure(settings)  # open mode on 0.0.0.0 only because LEDGER_INSECURE=1
    assert settings.insecure and not settings.token_file
    assert projections_in_process(settings) is False


def test_healthchecks_run_commands_the_images_have(compose: dict[str, Any]) -> None:
    final = _final_stage()
    paths = [a for k, a in final if k == "ENV" and "PATH=" in a]
    assert paths and "/opt/ledger/bin" in paths[0]
    copies = [a.split() for k, a in final if k == "COPY"]
    assert ["deploy/healthcheck.py", "/opt/ledger/bin/ledger-healthcheck"] in copies
    assert any("chmod 0755 /opt/ledger/bin/ledger-healthcheck" in a for k, a in final if k == "RUN")
    parser = _load_healthcheck_module().build_parser()
    for name, service in _services(compose).items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: exec form, no shell needed"
        executable, arguments = test[1], test[2:]
        if _is_ledger_image(service):
            assert executable == "ledger-healthcheck", name
            parser.parse_args(arguments)  # SystemExit on an unknown check or flag
        else:
            tools = IMAGE_TOOLS[_image_repository(service["image"])]
            assert executable in tools, f"{name}: {service['image']} has no {executable}"
    nats_image = _services(compose)["nats"]["image"]
    assert nats_image.endswith("-alpine"), "the scratch nats image has no wget"


# ---- the image ------------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_image_of_the_package() -> None:
    instructions = _dockerfile_instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in instructions if k == "ARG"}
    bases = [a.split()[0] for k, a in instructions if k == "FROM"]
    assert {args.get(b.strip("${}"), b) for b in bases} == {"python:3.11-slim"}
    assert any(k == "RUN" and re.search(r"pip install \.(\s|$)", a) for k, a in instructions)
    final = _final_stage()
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert ("ENTRYPOINT", '["ledger"]') in final
    assert any(k == "HEALTHCHECK" for k, _ in final)
    for keyword, arguments in instructions:
        if keyword == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: no such path"


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as Docker reads it: later lines win, ``!`` re-includes, a pattern that
    matches a directory matches everything below it, ``**`` spans directories."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        regex, i, pattern = "", 0, pattern.strip("/")
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def _in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negated
    return not excluded


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    rules = _dockerignore_rules()
    copied = 0
    for keyword, arguments in _dockerfile_instructions():
        if keyword != "COPY" or arguments.startswith("--from"):
            continue
        for source in arguments.split()[:-1]:
            root = REPO / source
            files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if "__pycache__" in relative or relative.endswith(".pyc"):
                    assert not _in_context(relative, rules), relative
                    continue
                assert _in_context(relative, rules), f"{relative} is not in the build context"
                copied += 1
    assert copied > 50
    for outside in ("tests/conftest.py", "docs/operations.md", ".git/HEAD", "docker-compose.yml"):
        assert not _in_context(outside, rules), outside
    assert not _in_context(".tools/compose-venv/bin/python", rules)
    assert not _in_context("ledger.db", rules)


# ---- Prometheus, Grafana, NATS --------------------------------------------------------------


def test_prometheus_scrapes_every_ledger_process(tools: Tools, compose: dict[str, Any]) -> None:
    services = _services(compose)
    config = tools.load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # docs/operations.md's alerts select job="ledger".
    targets = {
        target: group.get("labels", {})
        for group in jobs["ledger"]["static_configs"]
        for target in group["targets"]
    }
    expected = set()
    for name in LEDGER_SERVICES:
        port = services[name]["environment"]["LEDGER_METRICS_LISTEN"].rsplit(":", 1)[1]
        expected.add(f"{name}:{port}")
    assert set(targets) == expected
    assert {labels.get("component") for labels in targets.values()} == {
        "api",
        "projections",
        "ingest",
    }
    source = _mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    assert Path(source).resolve() == DEPLOY / "prometheus" / "prometheus.yml"


def _exported_metrics() -> dict[str, set[str]]:
    """Every sample name the ledger's processes can export, with its label names."""
    from prometheus_client.metrics import MetricWrapperBase

    from ledger.metrics import definitions as metrics
    from ledger.metrics.projection_lag import ProjectionLagCollector

    exported: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for suffix in suffixes[value._type]:
                labels = set(value._labelnames)
                if suffix == "_bucket":
                    labels.add("le")
                exported[value._name + suffix] = labels
    lag = ProjectionLagCollector(
        lambda: type("S", (), {"head_position": 2, "applied_position": 1})()
    )
    for family in [*metrics.REGISTRY.collect(), *lag.collect()]:
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def test_grafana_dashboard_queries_only_exported_metrics(
    tools: Tools, compose: dict[str, Any]
) -> None:
    services = _services(compose)
    grafana = services["grafana"]
    mounts = _mounts(grafana)
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert Path(mounts["/etc/grafana/provisioning"]).resolve() == provisioning
    datasources = tools.load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    uids = {d["uid"] for d in datasources if d["type"] == "prometheus"}
    assert any(d["url"] == "http://prometheus:9090" for d in datasources)
    providers = tools.load_yaml(provisioning / "dashboards" / "ledger.yml")["providers"]
    dashboard_dir = Path(mounts[providers[0]["options"]["path"]]).resolve()
    assert dashboard_dir == DEPLOY / "grafana" / "dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboard_dir / Path(home).name).is_file()

    exported = _exported_metrics()
    dashboards = sorted(dashboard_dir.glob("*.json"))
    assert dashboards
    used: list[tuple[set[str], set[str]]] = []  # (metrics, labels) of each query
    for path in dashboards:
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
        targets = []
        for panel in panels:
            assert panel["datasource"]["uid"] in uids, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids, panel["title"]
                targets.append((panel["title"], target))
        analyses = tools.promql([target["expr"] for _, target in targets])
        for (title, target), analysis in zip(targets, analyses, strict=True):
            assert "error" not in analysis, (title, target["expr"], analysis)
            metrics = set(analysis["metrics"])
            assert metrics, (title, target["expr"])
            unknown = metrics - set(exported) - {"up"}
            assert not unknown, f"{title}: {sorted(unknown)} are not exported by the ledger"
            allowed = TARGET_LABELS.union(*(exported.get(m, set()) for m in metrics))
            assert set(analysis["labels"]) <= allowed, (title, analysis["labels"], allowed)
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= set(analysis["labels"]) | TARGET_LABELS, (title, legend)
            used.append((metrics, set(analysis["labels"])))
    missing = {
        figure
        for figure, (metric, labels) in DASHBOARD_FIGURES.items()
        if not any(metric in metrics and labels <= grouped for metrics, grouped in used)
    }
    assert not missing, f"the dashboard lacks {sorted(missing)}"


def test_nats_configuration_is_valid_with_durable_jetstream(compose: dict[str, Any]) -> None:
    conf_path = DEPLOY / "nats" / "nats.conf"
    conf = conf_path.read_text(encoding="utf-8")
    result = subprocess.run(
        [str(nats_server_binary()), "--config", str(conf_path), "-t"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf, re.MULTILINE)
    store = re.search(r"^\s*store_dir:\s*(\S+)\s*$", conf, re.MULTILINE)
    assert store, "JetStream file storage needs a store_dir"
    nats = _services(compose)["nats"]
    assert nats["command"][-1] == "/etc/nats/nats.conf"
    mounts = _mounts(nats)
    assert Path(mounts["/etc/nats/nats.conf"]).resolve() == conf_path
    assert any(
        source in compose["volumes"] and store.group(1).startswith(target + "/")
        for target, source in mounts.items()
    ), "the JetStream store must be on a named volume"
    monitor = re.search(r"^http:\s*\S+:(\d+)\s*$", conf, re.MULTILINE)
    client = re.search(r"^listen:\s*\S+:(\d+)\s*$", conf, re.MULTILINE)
    assert monitor and client
    health_url = urllib.parse.urlsplit(nats["healthcheck"]["test"][-1])
    assert health_url.port == int(monitor.group(1)) and health_url.path == "/healthz"
    ingest_url = urllib.parse.urlsplit(
        _services(compose)["ingest"]["environment"]["LEDGER_NATS_URL"]
    )
    assert ingest_url.port == int(client.group(1))


# ---- alerts as code (issue 17): deploy/prometheus/alerts.yml --------------------------------

ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
# The alerts the issue names, by the rule that is each of them.
ISSUE_ALERTS = {
    "ledger down": "LedgerDown",
    "projection lag": "LedgerProjectionLag",
    "ingest lag": "LedgerIngestLag",
    "DLQ growth": "LedgerDeadLetters",
    "writer stalls": "LedgerWriterStalled",
    "error ratio": "LedgerErrorRatio",
}
SEVERITIES = {"page", "ticket"}


def _promtool(binaries: PrometheusBinaries, *args: str, cwd: Path = REPO) -> tuple[int, str]:
    result = subprocess.run(
        [str(binaries.promtool), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _alert_rules(tools: Tools, path: Path = ALERTS) -> dict[str, dict[str, Any]]:
    """alert name -> rule, over every group (names are unique)."""
    rules = [rule for group in tools.load_yaml(path)["groups"] for rule in group["rules"]]
    assert all("alert" in rule for rule in rules), "only alerting rules belong in alerts.yml"
    by_name = {rule["alert"]: rule for rule in rules}
    assert len(by_name) == len(rules), "alert names must be unique"
    return by_name


def test_prometheus_loads_the_alerting_rules(
    tools: Tools, compose: dict[str, Any], prometheus_tools: PrometheusBinaries
) -> None:
    """promtool check config and check rules pass, and the container sees the rule file
    where prometheus.yml names it (relative to the configuration file)."""
    config = tools.load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == [ALERTS.name]
    mounts = _mounts(_services(compose)["prometheus"])
    assert Path(mounts[f"/etc/prometheus/{ALERTS.name}"]).resolve() == ALERTS
    config_path = str((DEPLOY / "prometheus" / "prometheus.yml").relative_to(REPO))
    status, output = _promtool(prometheus_tools, "check", "config", config_path)
    assert status == 0 and "1 rule files found" in output, output
    status, output = _promtool(prometheus_tools, "check", "rules", str(ALERTS))
    assert status == 0, output
    assert f"SUCCESS: {len(_alert_rules(tools))} rules found" in output, output


def test_alert_unit_tests_pass(prometheus_tools: PrometheusBinaries) -> None:
    status, output = _promtool(prometheus_tools, "test", "rules", str(ALERT_TESTS))
    assert status == 0 and "SUCCESS" in output, output


def test_every_alert_has_a_firing_and_a_silent_case(tools: Tools) -> None:
    """Each alert of alerts.yml is unit-tested both ways: some case expects it to fire, some
    case (a healthy stretch) expects it silent. Rules carry a severity and a summary, and
    docs/operations.md names each one."""
    rules = _alert_rules(tools)
    assert set(ISSUE_ALERTS.values()) <= set(rules), sorted(set(ISSUE_ALERTS.values()) - set(rules))
    tests = tools.load_yaml(ALERT_TESTS)
    assert tests["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            assert case["alertname"] in rules, (group["name"], case["alertname"])
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    assert set(rules) - firing == set(), "alerts no case expects to fire"
    assert set(rules) - silent == set(), "alerts no case expects to stay silent"
    operations = OPERATIONS_DOC.read_text(encoding="utf-8")
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"], name
        assert f"`{name}`" in operations, f"docs/operations.md does not name {name}"


def test_alert_unit_tests_catch_broken_rules(
    tools: Tools, prometheus_tools: PrometheusBinaries, tmp_path: Path
) -> None:
    """The unit tests are not vacuous: with every rule made to never fire, each alert's
    firing case fails; made to always fire, each alert's silent case fails."""
    rules = _alert_rules(tools)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    for expr, which in (("vector(0) > 1", "firing"), ("vector(1)", "silent")):
        groups = tools.load_yaml(ALERTS)["groups"]
        for group in groups:
            for rule in group["rules"]:
                rule["expr"] = expr
        # JSON is YAML: the broken copy needs no YAML writer.
        (tmp_path / ALERTS.name).write_text(json.dumps({"groups": groups}), encoding="utf-8")
        status, output = _promtool(
            prometheus_tools, "test", "rules", ALERT_TESTS.name, cwd=tmp_path
        )
        assert status != 0, output
        failed = set(re.findall(r"alertname: (\w+),", output))
        assert failed == set(rules), (which, sorted(set(rules) - failed))


def test_alerts_query_only_exported_metrics(tools: Tools) -> None:
    """Every rule parses and selects only metrics and labels the ledger's processes export
    (plus ``up`` and the labels Prometheus adds to a target)."""
    rules = _alert_rules(tools)
    exported = _exported_metrics()
    analyses = tools.promql([rule["expr"] for rule in rules.values()])
    for (name, rule), analysis in zip(rules.items(), analyses, strict=True):
        assert "error" not in analysis, (name, analysis)
        metrics = set(analysis["metrics"])
        assert metrics, name
        unknown = metrics - set(exported) - {"up"}
        assert not unknown, f"{name}: {sorted(unknown)} are not exported by the ledger"
        allowed = TARGET_LABELS.union(*(exported.get(m, set()) for m in metrics))
        assert set(analysis["labels"]) <= allowed, (name, analysis["labels"], allowed)
        templated = set(re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"]))
        assert templated <= set(analysis["labels"]) | TARGET_LABELS, (name, templated)


# ---- rehearsal: the stack's processes, from the compose file, on this machine ---------------


@dataclasses.dataclass
class _Running:
    name: str
    process: subprocess.Popen
    log: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _spawn(name: str, argv: list[str], env: dict[str, str], directory: Path) -> _Running:
    log = directory / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            launched(argv, death_signal=signal.SIGKILL, env=env),
            env=env,
            cwd=directory,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return _Running(name, process, log, env)


def _stop(running: _Running, timeout: float) -> int:
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
    try:
        return running.process.wait(timeout)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait(10)
        raise


def _duration_seconds(text: str) -> float:
    """A compose duration such as ``20s``, ``1m30s`` or ``500ms``."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(number) * units[unit] for number, unit in parts)


def _healthy_within(
    running: _Running, test: list[str], seconds: float
) -> subprocess.CompletedProcess:
    """Run the service's healthcheck (``ledger-healthcheck`` is deploy/healthcheck.py) until
    it passes, as Docker does during start_period."""
    assert test[:2] == ["CMD", "ledger-healthcheck"], test
    argv = [sys.executable, str(HEALTHCHECK_SCRIPT), *test[2:]]
    deadline = time.monotonic() + seconds
    while True:
        result = subprocess.run(
            argv, env=running.env, capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode == 0:
            return result
        exited = running.process.poll()
        assert exited is None, f"{running.name} exited {exited}:\n{running.log_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"{running.name} not healthy: {result.stderr}\n{running.log_text()[-4000:]}"
        )
        time.sleep(0.5)


@pytest.mark.postgres
@pytest.mark.slow
def test_stack_rehearsal_every_healthcheck_passes(
    compose: dict[str, Any], postgres_database_url: str, tmp_path: Path
) -> None:
    """api-1, api-2, projections and ingest run as the compose file says (command and
    environment; hosts and ports mapped to this machine) over one PostgreSQL database and a
    nats-server on deploy/nats/nats.conf; every compose healthcheck passes, a movement
    published to NATS is readable on both replicas, and SIGTERM stops each one cleanly within
    its stop_grace_period."""
    import grpc
    import nats
    from inventory.ledger.v1 import query_service_pb2 as qs
    from inventory.ledger.v1 import query_service_pb2_grpc as qs_grpc

    from ingest.bridge import publish_movement

    services = _services(compose)
    # NATS from the stack's own configuration file, moved to free ports and a temp store.
    client_port, monitor_port = free_tcp_port(), free_tcp_port()
    conf = (DEPLOY / "nats" / "nats.conf").read_text(encoding="utf-8")
    for old, new in (
        ("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{client_port}"),
        ("http: 0.0.0.0:8222", f"http: 127.0.0.1:{monitor_port}"),
        ("store_dir: /data/jetstream", f"store_dir: {json.dumps(str(tmp_path / 'js'))}"),
    ):
        assert conf.count(old) == 1, old
        conf = conf.replace(old, new)
    (tmp_path / "nats.conf").write_text(conf, encoding="utf-8")
    nats_url = f"nats://127.0.0.1:{client_port}"
    running: list[_Running] = []
    try:
        running.append(
            _spawn(
                "nats",
                [str(nats_server_binary()), "--config", str(tmp_path / "nats.conf")],
                dict(os.environ),
                tmp_path,
            )
        )
        health = urllib.parse.urlsplit(services["nats"]["healthcheck"]["test"][-1])
        health_url = health._replace(netloc=f"127.0.0.1:{monitor_port}").geturl()
        deadline = time.monotonic() + 20
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(health_url, timeout=2) as response,
            ):
                if response.status == 200:
                    break
            assert time.monotonic() < deadline, running[0].log_text()
            time.sleep(0.2)

        # The four ledger processes at once, as compose starts them once their
        # dependencies are healthy (the start-up DDL copes with concurrent fresh starts).
        base = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        ledger: dict[str, _Running] = {}
        for name in LEDGER_SERVICES:
            env = dict(base)
            for key, value in services[name]["environment"].items():
                if key == "LEDGER_DATABASE_URL":
                    value = postgres_database_url
                elif key == "LEDGER_NATS_URL":
                    value = nats_url
                elif key in ("LEDGER_LISTEN", "LEDGER_METRICS_LISTEN"):
                    value = f"127.0.0.1:{free_tcp_port()}"
                env[key] = value
            argv = [sys.executable, "-m", "entrypoints.cli", *services[name]["command"]]
            ledger[name] = _spawn(name, argv, env, tmp_path)
            running.append(ledger[name])
        for name, process in ledger.items():
            check = services[name]["healthcheck"]
            budget = _duration_seconds(check["start_period"]) + check["retries"] * (
                _duration_seconds(check["interval"])
            )
            _healthy_within(process, check["test"], budget)

        payload = {
            "message_id": "compose-1",
            "source": "wms-compose",
            "type": "receipt",
            "sku": "SKU-COMPOSE",
            "location_id": "DC-1",
            "qty": 7,
            "occurred_at": "2026-11-22T10:15:00Z",
        }

        async def publish() -> None:
            nc = await nats.connect(nats_url)
            try:
                await publish_movement(nc.jetstream(), payload)
            finally:
                await nc.drain()

        asyncio.run(publish())
        for name in ("api-1", "api-2"):
            with grpc.insecure_channel(ledger[name].env["LEDGER_LISTEN"]) as channel:
                stub = qs_grpc.InventoryQueryServiceStub(channel)
                request = qs.GetPositionRequest(sku="SKU-COMPOSE", location_id="DC-1")
                deadline = time.monotonic() + 30
                while stub.GetPosition(request, timeout=5).on_hand != 7:
                    assert time.monotonic() < deadline, ledger["ingest"].log_text()[-4000:]
                    time.sleep(0.1)

        for name, process in ledger.items():
            grace = _duration_seconds(services[name]["stop_grace_period"])
            started = time.monotonic()
            assert _stop(process, grace) == 0, process.log_text()[-4000:]
            assert time.monotonic() - started < grace, name
            assert "Traceback" not in process.log_text(), process.log_text()[-4000:]
    finally:
        for process in reversed(running):
            with contextlib.suppress(subprocess.TimeoutExpired):
                _stop(process, 30)
