"""Locating and installing buf for tools/buf.py: the pinned ``@bufbuild/buf`` npm package,
installed once into ``.tools/buf/`` (git-ignored) and reused; ``LEDGER_BUF=/path/to/buf``
uses another binary."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUF_VERSION = "1.75.0"
BUF_PACKAGE = "@bufbuild/buf"
TOOLS_DIR = REPO_ROOT / ".tools" / "buf"
BUF_ENV = "LEDGER_BUF"
NPM_TIMEOUT_SECONDS = 300


class BufUnavailable(RuntimeError):
    """buf could not be found or installed (no npm, registry unreachable, ...)."""


def _buf_version(binary: Path) -> str:
    result = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout.strip() or result.stderr.strip()


def _installed_binary(prefix: Path) -> Path | None:
    """The buf binary of an npm install of :data:`BUF_VERSION` under ``prefix``, if present."""
    package_json = prefix / "node_modules" / "@bufbuild" / "buf" / "package.json"
    try:
        version = json.loads(package_json.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    if version != BUF_VERSION:
        return None
    # The platform package (@bufbuild/buf-linux-x64, ...) holds the native binary; bin/buf of
    # the main package is a Node.js launcher for it, used only when the former is not there.
    native = sorted((prefix / "node_modules" / "@bufbuild").glob("buf-*/bin/buf"))
    candidates = [*native, prefix / "node_modules" / ".bin" / "buf"]
    return next((path for path in candidates if os.access(path, os.X_OK)), None)


@contextlib.contextmanager
def _install_lock(prefix: Path) -> Iterator[None]:
    """Serialize installs: several test runs may share one checkout."""
    import fcntl  # POSIX only, like the rest of the tooling.

    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / "buf.install.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install(prefix: Path = TOOLS_DIR) -> Path:
    """Install ``@bufbuild/buf@BUF_VERSION`` with npm under ``prefix``; return the binary."""
    npm = shutil.which("npm")
    if npm is None:
        raise BufUnavailable(
            f"npm not found: install Node.js and npm (buf comes from the npm package "
            f"{BUF_PACKAGE}@{BUF_VERSION}), or set {BUF_ENV}=/path/to/buf"
        )
    with _install_lock(prefix):
        binary = _installed_binary(prefix)
        if binary is not None:
            return binary
        prefix.mkdir(parents=True, exist_ok=True)
        # A package.json of its own keeps npm from adopting a package.json further up.
        (prefix / "package.json").write_text(
            '{"name": "ledger-buf-tool", "private": true}\n', encoding="utf-8"
        )
        command = [
            npm,
            "install",
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
            str(prefix),
            f"{BUF_PACKAGE}@{BUF_VERSION}",
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise BufUnavailable(
                f"npm install {BUF_PACKAGE}@{BUF_VERSION} timed out after {error.timeout} s"
            ) from error
        binary = _installed_binary(prefix)
        if result.returncode != 0 or binary is None:
            output = (result.stderr or result.stdout).strip()[-2000:]
            raise BufUnavailable(
                f"`{' '.join(command)}` failed (status {result.returncode}); is the npm "
                f"registry reachable?\n{output}"
            )
        return binary


def buf_binary() -> Path:
    """The buf binary to run: ``$LEDGER_BUF``, else the cached npm install, else install it."""
    override = os.environ.get(BUF_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BufUnavailable(f"{BUF_ENV}={override} is not an executable file")
        return path
    binary = _installed_binary(TOOLS_DIR)
    return binary if binary is not None else install(TOOLS_DIR)
