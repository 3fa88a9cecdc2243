"""``ledger projections rebuild`` and ``ledger projections status``: one-shot work on the
read models."""

from __future__ import annotations

import json
import logging

from entrypoints import bootstrap
from ledger.config import Settings
from ledger.logs import redacted

log = logging.getLogger("ledger")


def rebuild_projections(settings: Settings, batch_size: int | None = None) -> int:
    """``ledger projections rebuild``: returns the exit code."""
    from ledger.progress import progress_on_stderr
    from projections.rebuild import REBUILD_BATCH_MAX, rebuild
    from projections.store import RebuildInProgress

    app = bootstrap.open_ledger_app(settings)
    store = bootstrap.open_read_models(settings)
    try:
        with progress_on_stderr() as progress:
            batch_max = batch_size or REBUILD_BATCH_MAX
            report = rebuild(app, store, batch_max=batch_max, progress=progress)
    except RebuildInProgress as error:
        log.error("%s", error)
        return 1
    finally:
        store.close()
        app.close()
    log.info(
        "rebuilt the read models of %s: generation %d active at position %d"
        " (%d notifications in %.2f s, %.0f/s; generation %d dropped)",
        redacted(settings.database_url),
        report.generation,
        report.position,
        report.notifications,
        report.seconds,
        report.notifications_per_second,
        report.previous,
    )
    return 0


def projections_status(settings: Settings) -> int:
    """``ledger projections status``: one JSON object on stdout."""
    app = bootstrap.open_ledger_app(settings)
    store = bootstrap.open_read_models(settings)
    try:
        generation, applied = store.tracking()
        head = app.head_position()
        status = {
            "generation": generation,
            "applied_position": applied,
            "head_position": head,
            "lag": max(0, head - applied),
            "generations": store.generations(),
        }
    finally:
        store.close()
        app.close()
    print(json.dumps(status))
    return 0
