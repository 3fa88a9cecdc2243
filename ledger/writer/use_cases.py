"""The write use cases by name: what crosses to a writer process instead of a closure.

Each entry builds the pipeline command from plain, picklable arguments (the call context,
dataclass inputs, strings, numbers), so an API process can name a write and its arguments and
the writer process rebuilds exactly the command the API process would have run itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ledger.unit_of_work import Command
from ledger.use_cases import movements, policies, reservations

WRITE_USE_CASES: Mapping[str, Callable[..., Command[Any]]] = {
    "record_movements": movements.record_movements,
    "reserve": reservations.reserve,
    "commit": reservations.commit,
    "release": reservations.release,
    "expire_due": reservations.expire_due,
    "set_safety_stock": policies.set_safety_stock,
    "set_channel_fence": policies.set_channel_fence,
    "set_channel_policy": policies.set_channel_policy,
    "set_item_policy": policies.set_item_policy,
}


def build_command(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Command[Any]:
    """The pipeline command for the use case ``name`` (KeyError for an unknown name)."""
    return WRITE_USE_CASES[name](*args, **kwargs)
