"""Requests that arrive while a batch is being answered form the next batch.

At one request in flight a batch is that request and nothing waits; under load one feature
lookup, one Triton call and one faiss search serve many requests, and no thread pool fights
over the GIL. A request whose answer is known early (a cold start, after the lookup) is
answered then, not when its batch is done.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class Batcher:
    """Collects the requests that arrive while a batch is being answered into the next batch.

    Lives on the event loop (no locks): `submit` queues a request and starts a drain task when
    fewer than `workers` are running; each drain hands batches to `answer_many(requests,
    deliver)` on its own worker thread. Two workers let one batch look up features and search
    while the other waits on Triton (those calls release the GIL). `deliver(i, result)` may be
    called from that thread for answers ready early; the rest come back as its return value.
    """

    def __init__(self, answer_many, max_batch: int = 64, workers: int = 2):
        self.answer_many = answer_many
        self.max_batch = max_batch
        self.workers = workers
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="recommend")
        self.tasks: set[asyncio.Task] = set()  # referenced: not garbage-collected mid-drain
        # Drains still looping. Not len(self.tasks): a drain that has left its loop stays in
        # `tasks` until its done-callback runs, so a request queued in between found every
        # worker "busy" and waited for some later request to start a drain (a client of the
        # chaos test once timed out after 10 s, during a Redis outage's very short batches).
        self.draining = 0

    async def submit(self, request):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((request, future))
        if self.draining < self.workers:
            self.draining += 1  # counted now, before the task first runs
            task = loop.create_task(self._drain())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            await self._answer_pending()
        finally:
            self.draining -= 1  # in the same step as the loop's last check: no gap

    async def _answer_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            batch = self.pending[: self.max_batch]
            del self.pending[: self.max_batch]
            futures = [future for _, future in batch]

            def deliver(i: int, result, futures=futures) -> None:
                loop.call_soon_threadsafe(_resolve, futures[i], result)

            try:
                results = await loop.run_in_executor(
                    self.executor, self.answer_many, [r for r, _ in batch], deliver
                )
            except Exception as e:
                log.exception("a batch of %d requests failed", len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for future, result in zip(futures, results, strict=True):
                _resolve(future, result)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _resolve(future: asyncio.Future, result) -> None:
    if not future.done():  # delivered early already, or the client went away
        future.set_result(result)
