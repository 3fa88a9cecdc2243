"""Generate the JSON Schema of the canonical ingest message (contract §5).

Usage: ``python -m tools.gen_ingest_schema [--check]``.

The schema comes from :class:`ingest.message.CanonicalMessage` (``model_json_schema()``) and is
written with sorted keys, so the output is deterministic; ``--check`` exits 1 when the committed
file is missing or stale and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ingest.message import CanonicalMessage

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "ingest" / "schema" / "canonical-movement.schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def render() -> str:
    """The schema file's exact text."""
    schema = {"$schema": SCHEMA_DIALECT, **CanonicalMessage.model_json_schema()}
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def is_fresh(path: Path = SCHEMA_PATH) -> bool:
    """True when ``path`` holds exactly what :func:`render` produces."""
    try:
        return path.read_text(encoding="utf-8") == render()
    except FileNotFoundError:
        return False


def write(path: Path = SCHEMA_PATH) -> bool:
    """Write the schema; True when the file changed."""
    if is_fresh(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the schema file is stale")
    args = parser.parse_args(argv)
    if args.check:
        if is_fresh():
            return 0
        print(
            f"{SCHEMA_PATH.relative_to(REPO_ROOT)} is stale; run python -m tools.gen_ingest_schema"
        )
        return 1
    changed = write()
    print(f"{SCHEMA_PATH.relative_to(REPO_ROOT)} {'written' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
