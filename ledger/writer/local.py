"""The writer on a thread of this process: the command pipeline itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Protocol

from ledger.pipeline import CommandPipeline
from ledger.use_cases.context import CallContext
from ledger.writer.use_cases import build_command


class Writer(Protocol):
    """Where the service's writes go: this process's pipeline or a writer process."""

    def submit(
        self, ctx: CallContext, use_case: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Future[Any]:
        """Queue the use case; a command that cannot be reached before the caller's deadline
        (``ctx.time_remaining_seconds``) is refused now (PipelineOverloaded)."""
        ...

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Called (on a writer-side thread; keep it cheap) after commits that wrote events."""
        ...

    def close(self) -> None: ...


class LocalWriter:
    def __init__(self, pipeline: CommandPipeline) -> None:
        self.pipeline = pipeline

    def submit(
        self, ctx: CallContext, use_case: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Future[Any]:
        command = build_command(use_case, (ctx, *args), kwargs)
        return self.pipeline.submit(command, time_remaining=ctx.time_remaining_seconds)

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self.pipeline.add_commit_listener(listener)

    def expected_wait(self) -> float:
        return self.pipeline.expected_wait()

    def close(self) -> None:
        self.pipeline.close()
