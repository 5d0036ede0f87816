"""Coalescing concurrent calls into one statement.

A caller of ``start()`` is alone in its call, but a service that starts a thousand
workflows at once makes a thousand calls in the same instant. :class:`Batcher` lets
each caller await its own answer while one statement serves all the calls that were
waiting: one round trip and one transaction for the lot, instead of one each, with
nothing added to a call made alone (its batch is sent at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Runs ``flush`` on the items of concurrent :meth:`submit` calls, one flush at a time.

    Args:
        flush: answers a batch of items, one result per item, in order; an exception
            is every caller's of that batch.
        most: the largest batch.
    """

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]], *, most: int = 500) -> None:
        self._flush = flush
        self._most = most
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Queue ``item`` and return its result once its batch is flushed."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hms-batch")
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._most], self._waiting[self._most :]
                live = [(item, f) for item, f in batch if not f.cancelled()]
                if not live:
                    continue
                try:
                    results = await self._flush([item for item, _ in live])
                except BaseException as exc:
                    for _, f in live:
                        if not f.done():
                            f.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, f), result in zip(live, results, strict=True):
                    if not f.done():
                        f.set_result(result)
        finally:
            self._task = None
