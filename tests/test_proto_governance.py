"""Proto governance: `buf lint` passes on protos/, and `buf breaking` guards v1 (issue 6).

These tests are the CI check: `.ci/run` runs the whole suite, so CI lints the protos and
compares them with the contract as last released (the committed buf image
protos/v1.baseline.binpb) and with the protos of the previous commit (`HEAD~1` of the fresh
clone CI runs in); the baseline is what catches a breaking commit with others on top (issue 17).

Method: tools/buf.py runs the pinned buf from the @bufbuild/buf npm package. The breaking-rule
tests edit a scratch copy of protos/ and run the command line against the real tree; the CI
dry run builds a throwaway git repository whose last commit breaks v1 and runs the same
default command CI runs. Without buf (no npm, registry unreachable) the tests fail when CI=true
and are skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import buf as buf_tool

REPO = buf_tool.REPO_ROOT
V1 = Path("inventory/ledger/v1")
GIT_IDENTITY = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
GIT_IDENTITY += ["-c", "commit.gpgsign=false"]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="module", autouse=True)
def buf_available() -> Path:
    """The buf binary, installed on first use; fail in CI, skip elsewhere, when it cannot be."""
    try:
        return buf_tool.buf_binary()
    except buf_tool.BufUnavailable as error:
        if IN_CI:
            pytest.fail(f"buf is required in CI for the proto governance check: {error}")
        pytest.skip(f"buf unavailable (the check runs in CI): {error}")


def copy_protos(dest: Path) -> Path:
    tree = dest / "protos"
    shutil.copytree(buf_tool.PROTO_ROOT, tree, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def edit(tree: Path, relative: str, old: str, new: str) -> None:
    path = tree / V1 / relative
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} not found exactly once in {relative}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.buf", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        [*GIT_IDENTITY, "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


# --- lint ------------------------------------------------------------------------------------


def test_buf_lint_passes_on_protos():
    outcome = buf_tool.lint()
    assert outcome.status == 0, outcome.report()
    assert outcome.findings == []


def test_lint_command_line_passes():
    result = run_cli("lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf lint: ok" in result.stdout


def test_only_the_spec_mandated_response_names_are_excepted(tmp_path):
    """Under plain STANDARD the only findings are the two waived rules, in the waived files."""
    tree = copy_protos(tmp_path)
    (tree / "buf.yaml").write_text(
        "version: v2\nmodules:\n  - path: .\nlint:\n  use:\n    - STANDARD\n", encoding="utf-8"
    )
    outcome = buf_tool.lint(tree)
    assert outcome.status == 1, outcome.report()
    assert outcome.rules == {"RPC_RESPONSE_STANDARD_NAME", "RPC_REQUEST_RESPONSE_UNIQUE"}
    waived = {
        f"protos/{V1 / name}.proto"
        for name in ("audit_service", "policy_service", "query_service", "reservation_service")
    }
    assert {finding.path for finding in outcome.findings} == waived


def test_lint_still_applies_to_new_services_and_enums(tmp_path):
    """The waiver is per file: a new service file, and a badly named enum, are findings."""
    tree = copy_protos(tmp_path)
    (tree / V1 / "export_service.proto").write_text(
        'syntax = "proto3";\n\npackage inventory.ledger.v1;\n\n'
        'import "inventory/ledger/v1/position.proto";\n\n'
        "// Exports positions.\nservice ExportService {\n"
        "  // Exports one position.\n"
        "  rpc ExportPosition(ExportPositionRequest) returns (Position);\n}\n\n"
        "// Request of ExportService.ExportPosition.\nmessage ExportPositionRequest {\n"
        "  // SKU.\n  string sku = 1;\n}\n\n"
        "// Export formats.\nenum ExportFormat {\n  // Unset.\n  EXPORT_FORMAT_UNSPECIFIED = 0;\n"
        "  // JSON lines.\n  JSONL = 1;\n}\n",
        encoding="utf-8",
    )
    result = run_cli("lint", "--protos", str(tree))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "RPC_RESPONSE_STANDARD_NAME" in result.stderr
    assert "ENUM_VALUE_PREFIX" in result.stderr
    assert f"protos/{V1}/export_service.proto:" in result.stderr


# --- breaking: the CI check against the previous commit --------------------------------------


def test_no_breaking_change_since_previous_commit():
    """What CI enforces: protos/ (working tree) against the released baseline and HEAD~1."""
    try:
        commit = buf_tool.previous_commit(REPO)
    except buf_tool.GitHistoryError as error:
        if IN_CI:
            pytest.fail(f"CI needs the previous commit for the breaking check: {error}")
        pytest.skip(f"no usable git history: {error}")
    if commit is None:
        pytest.skip("HEAD has no previous commit: nothing for buf breaking to compare with")
    outcome = buf_tool.breaking_gate()
    assert outcome.status == 0, "breaking change to v1:\n" + outcome.report()
    assert f"against the released baseline protos/{buf_tool.BASELINE_NAME}" in outcome.notes


# --- breaking: which changes are caught ------------------------------------------------------

POSITION_TAIL = "  repeated LotBuckets lots = 18;\n}\n"
# Position.damaged with its comment (LotBuckets has a damaged = 6 of its own).
POSITION_DAMAGED = "  // Damaged, not sellable, awaiting write-off.\n  int64 damaged = 6;\n"

BREAKING_CHANGES = {
    "remove a field": (
        "position.proto",
        POSITION_DAMAGED,
        "",
        "FIELD_NO_DELETE",
    ),
    "renumber a field": (
        "position.proto",
        "int64 version = 13;",
        "int64 version = 99;",
        "FIELD_NO_DELETE",
    ),
    "change a field's type": (
        "position.proto",
        "int64 version = 13;",
        "int32 version = 13;",
        "FIELD_SAME_TYPE",
    ),
    "rename a field": (
        "reservation.proto",
        "string order_ref = 3;",
        "string order_reference = 3;",
        "FIELD_SAME_NAME",
    ),
    "renumber an enum value": (
        "reservation.proto",
        "RESERVATION_STATUS_ACTIVE = 1;",
        "RESERVATION_STATUS_ACTIVE = 9;",
        "ENUM_VALUE_NO_DELETE",
    ),
    "remove an RPC": (
        "reservation_service.proto",
        "  rpc Release(ReleaseRequest) returns (Reservation);\n",
        "",
        "RPC_NO_DELETE",
    ),
    "change an RPC's response type": (
        "reservation_service.proto",
        "rpc Commit(CommitRequest) returns (Reservation);",
        "rpc Commit(CommitRequest) returns (ReserveRequest);",
        "RPC_SAME_RESPONSE_TYPE",
    ),
}


@pytest.mark.parametrize("change", sorted(BREAKING_CHANGES))
def test_breaking_change_is_reported_with_its_rule(tmp_path, change):
    relative, old, new, rule = BREAKING_CHANGES[change]
    tree = copy_protos(tmp_path)
    edit(tree, relative, old, new)
    result = run_cli("breaking", "--protos", str(tree), "--against-dir", str(buf_tool.PROTO_ROOT))
    assert result.returncode == 1, result.stdout + result.stderr
    assert rule in result.stderr, result.stderr
    assert f"protos/{V1}/{relative}:" in result.stderr


def test_moving_a_message_to_another_file_breaks_under_file_rules(tmp_path):
    """Why FILE and not PACKAGE: the Python stubs are per file (position_pb2.Hold)."""
    tree = copy_protos(tmp_path)
    position = tree / V1 / "position.proto"
    text = position.read_text(encoding="utf-8")
    start = text.index("// The part of one reservation held at a position.")
    position.write_text(text[:start], encoding="utf-8")
    with (tree / V1 / "reservation.proto").open("a", encoding="utf-8") as reservation:
        reservation.write("\n" + text[start:])
    outcome = buf_tool.breaking(tree, buf_tool.PROTO_ROOT)
    assert outcome.status == 1, outcome.report()
    assert "MESSAGE_NO_DELETE" in outcome.rules


NON_BREAKING_CHANGES = {
    "add a field": (
        "position.proto",
        POSITION_TAIL,
        POSITION_TAIL.replace("}", "  // A note.\n  string note = 19;\n}"),
    ),
    "add an enum value": (
        "reservation.proto",
        "RESERVATION_STATUS_ACTIVE = 1;",
        "RESERVATION_STATUS_ACTIVE = 1;\n  // Parked.\n  RESERVATION_STATUS_PARKED = 99;",
    ),
    "add a message": (
        "position.proto",
        POSITION_TAIL,
        POSITION_TAIL + "\n// A new message.\nmessage PositionNote {\n  // Text.\n"
        "  string text = 1;\n}\n",
    ),
    "reword a comment": (
        "position.proto",
        "// Sellable physical stock, put away.",
        "// Sellable physical stock that has been put away.",
    ),
}


@pytest.mark.parametrize("change", sorted(NON_BREAKING_CHANGES))
def test_compatible_change_passes(tmp_path, change):
    relative, old, new = NON_BREAKING_CHANGES[change]
    tree = copy_protos(tmp_path)
    edit(tree, relative, old, new)
    result = run_cli("breaking", "--protos", str(tree), "--against-dir", str(buf_tool.PROTO_ROOT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf breaking: ok" in result.stdout


# --- a dry run of the CI check in a throwaway repository ------------------------------------


@pytest.fixture
def repo_with_protos(tmp_path) -> Path:
    """A git repository whose single commit holds a copy of protos/."""
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_protos(repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "protos")
    git(repo, "commit", "-q", "-m", "protos")
    return repo


def test_ci_dry_run_catches_a_breaking_commit(repo_with_protos):
    """Last commit removes a v1 field: the default command (HEAD~1) fails naming the rule."""
    edit(repo_with_protos / "protos", "position.proto", POSITION_DAMAGED, "")
    git(repo_with_protos, "commit", "-q", "-am", "remove Position.damaged")
    result = run_cli("breaking", "--repo", str(repo_with_protos))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FIELD_NO_DELETE" in result.stderr
    assert 'Previously present field "6" with name "damaged"' in result.stderr
    assert "against HEAD~1" in result.stderr


def test_ci_dry_run_passes_a_compatible_commit(repo_with_protos):
    edit(
        repo_with_protos / "protos",
        "position.proto",
        POSITION_TAIL,
        POSITION_TAIL.replace("}", "  // A note.\n  string note = 19;\n}"),
    )
    git(repo_with_protos, "commit", "-q", "-am", "add Position.note")
    result = run_cli("breaking", "--repo", str(repo_with_protos))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "against HEAD~1" in result.stdout


def test_ci_dry_run_with_no_previous_commit_says_so(repo_with_protos):
    result = run_cli("breaking", "--repo", str(repo_with_protos))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAD has no previous commit" in result.stdout


def test_previous_commit_without_protos_has_nothing_to_compare(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("before the protos\n", encoding="utf-8")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "readme")
    copy_protos(repo)
    git(repo, "add", "protos")
    git(repo, "commit", "-q", "-m", "protos")
    result = run_cli("breaking", "--repo", str(repo))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "has no protos/: nothing to compare" in result.stdout


def test_ci_catches_a_breaking_commit_with_another_commit_on_top(repo_with_protos):
    """Must show 7 (issue 17): a breaking commit followed by an unrelated one still fails the
    default command, through the released baseline; HEAD~1 alone (the old gate) passes it."""
    edit(repo_with_protos / "protos", "position.proto", POSITION_DAMAGED, "")
    git(repo_with_protos, "commit", "-q", "-am", "remove Position.damaged")
    (repo_with_protos / "NOTES.md").write_text("an unrelated change\n", encoding="utf-8")
    git(repo_with_protos, "add", "NOTES.md")
    git(repo_with_protos, "commit", "-q", "-m", "notes")

    result = run_cli("breaking", "--repo", str(repo_with_protos))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FIELD_NO_DELETE" in result.stderr
    assert 'Previously present field "6" with name "damaged"' in result.stderr
    assert f"against the released baseline protos/{buf_tool.BASELINE_NAME}" in result.stderr

    previous_only = run_cli("breaking", "--repo", str(repo_with_protos), "--against-ref", "HEAD~1")
    assert previous_only.returncode == 0, previous_only.stdout + previous_only.stderr


def test_the_gate_fails_without_a_released_baseline(repo_with_protos):
    """Deleting the baseline must not silently weaken the gate to HEAD~1."""
    git(repo_with_protos, "rm", "-q", f"protos/{buf_tool.BASELINE_NAME}")
    git(repo_with_protos, "commit", "-q", "-m", "drop the baseline")
    result = run_cli("breaking", "--repo", str(repo_with_protos))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no released baseline" in result.stderr


def test_baseline_command_writes_the_image_the_gate_compares_with(tmp_path):
    """`baseline` at a release: the image of today's protos, against which a removal breaks
    and today's protos pass."""
    image = tmp_path / "release.binpb"
    result = run_cli("baseline", "--out", str(image))
    assert result.returncode == 0, result.stdout + result.stderr
    assert image.stat().st_size > 1000
    assert buf_tool.breaking(buf_tool.PROTO_ROOT, image).status == 0
    tree = copy_protos(tmp_path)
    edit(tree, "reservation.proto", "string order_ref = 3;", "string order_reference = 3;")
    outcome = buf_tool.breaking(tree, image)
    assert outcome.status == 1, outcome.report()
    assert "FIELD_SAME_NAME" in outcome.rules


def test_shallow_clone_without_the_parent_is_an_error(repo_with_protos, tmp_path):
    git(repo_with_protos, "commit", "-q", "--allow-empty", "-m", "second")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo_with_protos}", str(shallow))
    result = run_cli("breaking", "--repo", str(shallow))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "shallow clone" in result.stderr
