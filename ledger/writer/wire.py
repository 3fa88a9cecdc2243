"""What crosses the socket between API processes and the writer process.

Framing and authentication are ``multiprocessing.connection``'s (length-prefixed messages, an
HMAC challenge on connect with the ledger's writer key); each message is a pickled list, so a
burst of calls or answers costs one write and one read, not one per call.

API process -> writer: ``(CALL, call_id, use_case, ctx, args, kwargs)`` and
``(CANCEL, call_id)``. Writer -> API process: ``(ANSWER, call_id, result)``,
``(FAILED, call_id, portable error)``, ``(COMMITTED,)`` (events were committed: wake the
ledger's followers) and ``(LOAD, seconds)`` at the head of every message (how long a call
queued now would wait: the API process refuses calls whose deadline is nearer, without
sending them; see ``ledger.writer.client``).

Errors cross as (module, class name, args, attributes) and are rebuilt without calling the
class's ``__init__``, so exceptions whose constructor takes other arguments than their
``args`` (most of the ledger's) still arrive whole. Only classes of this code base and the
standard library are rebuilt; anything else arrives as a RuntimeError with its message.
"""

from __future__ import annotations

import builtins
import importlib
import pickle
from typing import Any

CALL = 1
CANCEL = 2
ANSWER = 3
FAILED = 4
COMMITTED = 5
LOAD = 6

_REBUILDABLE = ("ledger.", "eventsourcing.", "concurrent.futures")

PortableError = tuple[str, str, tuple[Any, ...], dict[str, Any]]


def dumps(messages: list[tuple[Any, ...]]) -> bytes:
    return pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> list[tuple[Any, ...]]:
    messages: list[tuple[Any, ...]] = pickle.loads(data)
    return messages


def portable(error: BaseException) -> PortableError:
    kind = type(error)
    attributes = {k: v for k, v in vars(error).items() if _picklable(v)}
    args = tuple(a if _picklable(a) else str(a) for a in error.args)
    return kind.__module__, kind.__qualname__, args, attributes


def rebuilt(error: PortableError) -> BaseException:
    module, name, args, attributes = error
    kind: Any = None
    if module == "builtins":
        kind = getattr(builtins, name, None)
    elif module.startswith(_REBUILDABLE):
        try:
            kind = importlib.import_module(module)
            for part in name.split("."):
                kind = getattr(kind, part)
        except (ImportError, AttributeError):
            kind = None
    if not (isinstance(kind, type) and issubclass(kind, BaseException)):
        return RuntimeError(f"{module}.{name}: {args[0] if args else ''}")
    rebuilt_error: BaseException = kind.__new__(kind)
    rebuilt_error.args = args
    rebuilt_error.__dict__.update(attributes)
    return rebuilt_error


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True
