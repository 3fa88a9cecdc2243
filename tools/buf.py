"""Proto governance with buf: lint ``protos/`` and check it for breaking changes, offline.

Usage::

    python -m tools.buf lint [--protos DIR]
    python -m tools.buf breaking [--protos DIR] [--against-ref REF | --against-dir DIR] [--repo DIR]
    python -m tools.buf baseline [--protos DIR] [--out FILE]

``breaking`` without ``--against-ref``/``--against-dir`` is the CI gate: it compares the protos
(default: this checkout's ``protos/``, working tree included) with the contract as last
released, the buf image ``protos/v1.baseline.binpb`` (:data:`BASELINE_NAME`), and with the
``protos/`` of ``HEAD~1``, and fails if either finds a breaking change. Against ``HEAD~1`` alone
a breaking commit followed by any other commit in the same submission would pass; the baseline
sees the whole submission. A repository without the baseline file cannot be gated (exit 2).
``--against-ref REF`` or ``--against-dir DIR`` compares with that one input only.

CI runs on a fresh clone of the submitted main, where ``HEAD`` is the submission and
``origin/main`` is that same commit, so ``HEAD~1`` is the only "previous commit" it has. A
repository whose ``HEAD`` has no parent has nothing to compare with there: that is reported and
only the baseline is checked. A shallow clone without the parent is an error (fetch more
history).

``baseline`` writes the image of the protos (default ``protos/``) to ``protos/v1.baseline.binpb``.
Run it at a release only, and commit the file with the release: rewriting it in an ordinary
change would let that change's breaking edits through.

buf is the ``@bufbuild/buf`` npm package at the version pinned in ``tools/buf_install.py``,
installed once with npm into ``.tools/buf/`` (git-ignored) and reused; ``LEDGER_BUF=/path/to/buf``
uses another binary.
buf cannot fetch ``deps`` from the Buf Schema Registry offline, so each run copies the protos
into a scratch directory and adds the ``google/api/*.proto`` files they import (found in the
installed googleapis-common-protos package, the one protoc uses in ``tools/gen_protos.py``);
those added files are excluded from lint and breaking checks. The well-known types
(``google/protobuf/*``) are built into buf.

Exit status: 0 clean (or nothing to compare), 1 lint or breaking findings, 2 could not run.
Findings are printed as ``protos/<file>:<line>:<column>: <RULE> <message>``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tools import gen_protos
from tools.buf_install import BufUnavailable, buf_binary

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_AGAINST_REF = "HEAD~1"
# The contract as last released, as a buf image; inside protos/ (buf builds only .proto files).
BASELINE_NAME = "v1.baseline.binpb"
BUF_TIMEOUT_SECONDS = 120
# buf's exit status when it ran and found lint or breaking violations.
BUF_FINDINGS_STATUS = 100

_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)
# Inputs are laid out under one scratch directory with these names (buf wants relative paths).
_CURRENT = "current"
_AGAINST = "against"


class GitHistoryError(RuntimeError):
    """The reference commit for ``breaking`` cannot be read (not a repo, shallow clone, ...)."""


@dataclass(frozen=True)
class Finding:
    """One lint or breaking-change violation reported by buf."""

    path: str
    line: int
    column: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.rule} {self.message}"


@dataclass
class Outcome:
    """What a check found: ``status`` is the command's exit status (0, 1 or 2)."""

    status: int
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rules(self) -> set[str]:
        return {finding.rule for finding in self.findings}

    def report(self) -> str:
        return "\n".join([*map(str, self.findings), *self.notes])


# --- assembling inputs -----------------------------------------------------------------------


def _imports(proto: Path) -> list[str]:
    return _IMPORT.findall(proto.read_text(encoding="utf-8"))


def _include_dirs() -> list[Path]:
    try:
        return [gen_protos.googleapis_include()]
    except RuntimeError:
        return []  # buf then names the import it cannot find.


def assemble(protos: Path, dest: Path) -> list[str]:
    """Copy the proto tree ``protos`` to ``dest`` and add the third-party files it imports.

    Returns the added files (module-relative POSIX paths), which are not ours to check. Imports
    of ``google/protobuf/*`` are left to buf, which has the well-known types built in.
    """
    shutil.copytree(protos, dest, ignore=shutil.ignore_patterns("__pycache__"))
    added: list[str] = []
    pending = sorted(dest.rglob("*.proto"))
    includes = None
    while pending:
        for name in _imports(pending.pop()):
            target = dest / name
            if name.startswith("google/protobuf/") or target.exists():
                continue
            includes = includes if includes is not None else _include_dirs()
            source = next((inc / name for inc in includes if (inc / name).is_file()), None)
            if source is None:
                continue  # buf reports the missing import with its location.
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            added.append(name)
            pending.append(target)
    return sorted(added)


def _git(repo: Path, *args: str, binary: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=not binary,
        timeout=120,
        check=False,
    )


def previous_commit(repo: Path, ref: str = DEFAULT_AGAINST_REF) -> str | None:
    """The commit ``ref`` names in ``repo``; None when ``HEAD`` has no parent to compare with.

    Raises :class:`GitHistoryError` when ``repo`` is no git repository, or is a shallow clone
    cut off before ``ref``, or ``ref`` names nothing.
    """
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise GitHistoryError(f"{repo} is not a git repository; cannot read {ref}")
    resolved = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if resolved.returncode == 0:
        return resolved.stdout.strip()
    if ref == DEFAULT_AGAINST_REF:
        parents = _git(repo, "rev-list", "--parents", "-n", "1", "HEAD")
        shallow = _git(repo, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        if parents.returncode == 0 and len(parents.stdout.split()) == 1 and not shallow:
            return None
        if shallow:
            raise GitHistoryError(
                f"{repo} is a shallow clone without {ref}: run `git fetch --deepen=1`"
            )
    raise GitHistoryError(f"{ref} is not a commit in {repo}")


def extract_protos(repo: Path, commit: str, dest: Path) -> bool:
    """Write ``protos/`` as of ``commit`` to ``dest``; False when that commit has no protos/."""
    listing = _git(repo, "ls-tree", "-d", "--name-only", commit, "protos")
    if listing.returncode != 0:
        raise GitHistoryError(listing.stderr.strip() or f"cannot list {commit}")
    if not listing.stdout.strip():
        return False
    archive = _git(repo, "archive", "--format=tar", commit, "protos", binary=True)
    if archive.returncode != 0:
        raise GitHistoryError(archive.stderr.decode(errors="replace").strip())
    with tempfile.TemporaryDirectory(prefix="buf_ref_") as scratch:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(scratch, filter="data")
        shutil.copytree(Path(scratch) / "protos", dest)
    return True


# --- running buf -----------------------------------------------------------------------------


def _run_buf(arguments: list[str], cwd: Path) -> Outcome:
    """Run buf with JSON output in ``cwd``; map paths under ``current/`` back to ``protos/``."""
    binary = buf_binary()
    environment = {**os.environ, "BUF_CACHE_DIR": str(cwd / ".buf-cache")}
    result = subprocess.run(
        [str(binary), *arguments, "--error-format", "json"],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=BUF_TIMEOUT_SECONDS,
        check=False,
    )
    findings, notes = [], []
    for line in result.stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            notes.append(line)
            continue
        path = str(entry.get("path", ""))
        for prefix in (f"{_CURRENT}/", f"{_AGAINST}/"):
            if path.startswith(prefix):
                path = "protos/" + path[len(prefix) :]
        findings.append(
            Finding(
                path=path,
                line=int(entry.get("start_line", 0)),
                column=int(entry.get("start_column", 0)),
                rule=str(entry.get("type", "")),
                message=str(entry.get("message", "")),
            )
        )
    notes.extend(line for line in result.stderr.splitlines() if line.strip())
    if result.returncode == 0:
        status = 0
    elif result.returncode == BUF_FINDINGS_STATUS and findings:
        status = 1
    else:
        status = 2
        notes.append(f"buf exited with status {result.returncode}")
    return Outcome(status, findings, notes)


def _exclusions(added: list[str], root: str) -> list[str]:
    return [argument for name in added for argument in ("--exclude-path", f"{root}/{name}")]


def lint(protos: Path = PROTO_ROOT) -> Outcome:
    """``buf lint`` on the proto tree ``protos`` with its own ``buf.yaml``."""
    with tempfile.TemporaryDirectory(prefix="buf_lint_") as scratch:
        work = Path(scratch)
        added = assemble(protos, work / _CURRENT)
        return _run_buf(["lint", _CURRENT, *_exclusions(added, _CURRENT)], work)


def breaking(protos: Path, against: Path) -> Outcome:
    """``buf breaking`` of the proto tree ``protos`` against the proto tree or buf image
    ``against``.

    The rules are those of ``protos/buf.yaml`` (the change being judged brings its config).
    """
    with tempfile.TemporaryDirectory(prefix="buf_breaking_") as scratch:
        work = Path(scratch)
        current, baseline = work / _CURRENT, work / _AGAINST
        added_current = assemble(protos, current)
        if against.is_file():
            # An image holds every file it was built with, the google/api ones included.
            return _run_buf(["breaking", _CURRENT, "--against", str(against.resolve())], work)
        added_baseline = assemble(against, baseline)
        # Both sides get the same third-party files, so dropping an import deletes no file.
        # (--exclude-path is no option here: buf resolves it against both inputs and fails.)
        _copy_missing(current, baseline, added_current)
        _copy_missing(baseline, current, added_baseline)
        return _run_buf(["breaking", _CURRENT, "--against", _AGAINST], work)


def _copy_missing(source: Path, target: Path, names: list[str]) -> None:
    for name in names:
        if not (target / name).exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)


def breaking_against_ref(
    ref: str = DEFAULT_AGAINST_REF, *, repo: Path = REPO_ROOT, protos: Path | None = None
) -> Outcome:
    """``buf breaking`` of ``protos`` (default: ``repo/protos``) against protos/ at ``ref``."""
    protos = protos if protos is not None else repo / "protos"
    commit = previous_commit(repo, ref)
    if commit is None:
        return Outcome(0, notes=[f"HEAD has no previous commit in {repo}: nothing to compare"])
    with tempfile.TemporaryDirectory(prefix="buf_against_") as scratch:
        against = Path(scratch) / "protos"
        if not extract_protos(repo, commit, against):
            return Outcome(0, notes=[f"{ref} ({commit[:12]}) has no protos/: nothing to compare"])
        outcome = breaking(protos, against)
    outcome.notes.insert(0, f"against {ref} ({commit[:12]})")
    return outcome


def build_baseline(protos: Path = PROTO_ROOT, out: Path | None = None) -> Outcome:
    """Write the buf image of ``protos`` to ``out`` (default: ``protos/`` + BASELINE_NAME)."""
    out = (out if out is not None else protos / BASELINE_NAME).resolve()
    with tempfile.TemporaryDirectory(prefix="buf_baseline_") as scratch:
        work = Path(scratch)
        assemble(protos, work / _CURRENT)
        # No source info: the image stays small and stable; findings point at current files.
        outcome = _run_buf(["build", _CURRENT, "--exclude-source-info", "--output", str(out)], work)
    if outcome.status == 0:
        outcome.notes.append(f"wrote {out}")
    return outcome


def breaking_against_baseline(*, repo: Path = REPO_ROOT, protos: Path | None = None) -> Outcome:
    """``buf breaking`` of ``protos`` (default: ``repo/protos``) against the released contract,
    ``repo/protos/`` + BASELINE_NAME; status 2 when that file is missing."""
    protos = protos if protos is not None else repo / "protos"
    image = repo / "protos" / BASELINE_NAME
    if not image.is_file():
        return Outcome(
            2,
            notes=[
                f"no released baseline {image}: run `python -m tools.buf baseline` at a "
                "release and commit it"
            ],
        )
    outcome = breaking(protos, image)
    outcome.notes.insert(0, f"against the released baseline protos/{BASELINE_NAME}")
    return outcome


def breaking_gate(*, repo: Path = REPO_ROOT, protos: Path | None = None) -> Outcome:
    """The CI check: breaking against the released baseline and against ``HEAD~1``.

    The worst status wins; findings both comparisons report are listed once.
    """
    released = breaking_against_baseline(repo=repo, protos=protos)
    previous = breaking_against_ref(repo=repo, protos=protos)
    findings = list(dict.fromkeys([*released.findings, *previous.findings]))
    return Outcome(
        max(released.status, previous.status), findings, [*released.notes, *previous.notes]
    )


# --- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.buf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    lint_parser = commands.add_parser("lint", help="buf lint the protos")
    breaking_parser = commands.add_parser(
        "breaking", help="buf breaking against the released baseline and HEAD~1"
    )
    baseline_parser = commands.add_parser(
        "baseline", help=f"write the protos' image to protos/{BASELINE_NAME} (at a release)"
    )
    for sub in (lint_parser, breaking_parser, baseline_parser):
        sub.add_argument(
            "--protos", type=Path, default=None, help="proto tree to check (default: protos/)"
        )
    baseline_parser.add_argument(
        "--out", type=Path, default=None, help=f"image to write (default: protos/{BASELINE_NAME})"
    )
    target = breaking_parser.add_mutually_exclusive_group()
    target.add_argument(
        "--against-ref",
        default=None,
        help=f"only this git commit's protos/ (default: protos/{BASELINE_NAME} and "
        f"{DEFAULT_AGAINST_REF})",
    )
    target.add_argument("--against-dir", type=Path, help="only this proto tree (or buf image)")
    breaking_parser.add_argument(
        "--repo", type=Path, default=REPO_ROOT, help="git repository (default: this checkout)"
    )
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "lint":
            outcome = lint((arguments.protos or PROTO_ROOT).resolve())
        elif arguments.command == "baseline":
            outcome = build_baseline((arguments.protos or PROTO_ROOT).resolve(), arguments.out)
        elif arguments.against_dir is not None:
            protos = (arguments.protos or PROTO_ROOT).resolve()
            outcome = breaking(protos, arguments.against_dir.resolve())
        elif arguments.against_ref is not None:
            protos = arguments.protos.resolve() if arguments.protos else None
            outcome = breaking_against_ref(
                arguments.against_ref, repo=arguments.repo.resolve(), protos=protos
            )
        else:
            protos = arguments.protos.resolve() if arguments.protos else None
            outcome = breaking_gate(repo=arguments.repo.resolve(), protos=protos)
    except (BufUnavailable, GitHistoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = outcome.report()
    if report:
        print(report, file=sys.stdout if outcome.status == 0 else sys.stderr)
    if outcome.status == 0:
        print(f"buf {arguments.command}: ok")
    elif outcome.status == 1:
        print(f"buf {arguments.command}: {len(outcome.findings)} finding(s)", file=sys.stderr)
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
