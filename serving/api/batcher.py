"""Requests that arrive while a batch is being answered form the next batch.

At one request in flight a batch is that request and nothing waits; under load one feature
lookup, one Triton call and one faiss search serve many requests, and no thread pool fights
over the GIL. A request whose answer is known early (a cold start, after the lookup) is
answered then, not when its batch is done; nor does it wait long for a worker: when every
worker has been on its batch for PATIENCE_S (waiting on a hung user tower, most likely: a paused
Triton answers nothing until the call times out), the queued requests get a lookup of their
own, which answers what it decides and leaves the rest (`Admitted`) to the workers.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from serving.pipeline.stages import Admitted

log = logging.getLogger(__name__)

PATIENCE_S = 0.05
"""How long every worker may be on one batch before the queued requests are looked up apart. A
batch takes milliseconds; the user tower's timeout is 0.5-1 s. Not at once: while the workers
are only busy, the queue forms the next batch (one lookup, one Triton call) as it should;
looking it up apart whenever both were busy cost a tenth of the throughput at 16 in flight."""


class Deliver:
    """`deliver(i, result)`: the answer of item i of a batch, sent from its worker thread as
    soon as it is known. With `handoff`, the batch may stop after its lookup and return
    `Admitted` for the items that need the model path (serving.pipeline.recommender)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, futures: list, handoff: bool):
        self.loop, self.futures, self.handoff = loop, futures, handoff

    def __call__(self, i: int, result) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.futures[i], result)


class Batcher:
    """Collects the requests that arrive while a batch is being answered into the next batch.

    Lives on the event loop (no locks): `submit` queues a request and starts a drain when
    fewer than `workers` are running; each drain hands batches to `answer_many(items,
    deliver)` on its own worker thread. Two workers let one batch look up features and search
    while the other waits on Triton (those calls release the GIL). `deliver(i, result)` may be
    called from that thread for answers ready early; the rest come back as its return value.

    While every worker has been on its batch for PATIENCE_S, one more drain (`looking`) answers
    queued requests with `deliver.handoff` set: what the lookup decides is answered there, and
    an `Admitted` result is queued for the workers, who answer those (`answer_many` over them)
    before new requests.
    """

    def __init__(self, answer_many, max_batch: int = 64, workers: int = 2):
        self.answer_many = answer_many
        self.max_batch = max_batch
        self.workers = workers
        self.pending: list[tuple[object, asyncio.Future]] = []
        self.admitted: list[tuple[Admitted, asyncio.Future]] = []
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="recommend")
        # its own thread, started the first time it is needed: a third thread in the workers'
        # pool took turns with theirs and cost a tenth of the throughput at 64 in flight
        self.lookup_executor = ThreadPoolExecutor(1, thread_name_prefix="recommend-lookup")
        self.tasks: set[asyncio.Task] = set()  # referenced: not garbage-collected mid-drain
        # Drains still looping. Not len(self.tasks): a drain that has left its loop stays in
        # `tasks` until its done-callback runs, so a request queued in between found every
        # worker "busy" and waited for some later request to start a drain (a client of the
        # chaos test once timed out after 10 s, during a Redis outage's very short batches).
        self.draining = 0
        self.busy_since: dict[int, float] = {}  # worker → when its batch started (loop time)
        self.looking = False
        self.wake: asyncio.TimerHandle | None = None

    async def submit(self, request):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        self._start()
        return await future

    def _start(self) -> None:
        """A worker for what is queued if one is free; else the lookup drain once every
        worker has been on its batch for PATIENCE_S (a wake-up is set for then)."""
        loop = asyncio.get_running_loop()
        if not (self.pending or self.admitted):
            return
        if self.draining < self.workers:
            self.draining += 1  # counted now, before the task first runs
            self._spawn(self._drain())
        elif self.pending and not self.looking and self.wake is None:
            due = max(self.busy_since.values(), default=loop.time()) + PATIENCE_S
            if due <= loop.time():
                self.looking = True
                self._spawn(self._look_up())
            else:
                self.wake = loop.call_at(due, self._woken)

    def _woken(self) -> None:
        self.wake = None
        self._start()

    def _spawn(self, drain) -> None:
        task = asyncio.get_running_loop().create_task(drain)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self) -> None:
        loop, me = asyncio.get_running_loop(), id(asyncio.current_task())
        try:
            while self.admitted or self.pending:
                self.busy_since[me] = loop.time()
                await self._answer(self.admitted or self.pending)  # admitted first: older
                del self.busy_since[me]
        finally:
            self.busy_since.pop(me, None)
            self.draining -= 1  # in the same step as the loop's last check: no gap

    async def _look_up(self) -> None:
        try:
            while self.pending and self.draining >= self.workers:
                await self._answer(self.pending, handoff=True)
        finally:
            self.looking = False
            self._start()  # a worker freed meanwhile takes what is left

    async def _answer(self, queue: list, handoff: bool = False) -> None:
        """The next batch of `queue` through `answer_many`, on a worker thread."""
        loop = asyncio.get_running_loop()
        batch = queue[: self.max_batch]
        del queue[: self.max_batch]
        futures = [future for _, future in batch]
        deliver = Deliver(loop, futures, handoff)
        try:
            items = [item for item, _ in batch]
            executor = self.lookup_executor if handoff else self.executor
            results = await loop.run_in_executor(executor, self.answer_many, items, deliver)
        except Exception as e:
            log.exception("a batch of %d requests failed", len(batch))
            for future in futures:
                if not future.done():
                    future.set_exception(e)
            return
        for future, result in zip(futures, results, strict=True):
            if isinstance(result, Admitted) and not future.done():
                self.admitted.append((result, future))
            else:
                _resolve(future, result)
        if self.admitted:
            self._start()

    def close(self) -> None:
        if self.wake is not None:
            self.wake.cancel()
        for executor in (self.executor, self.lookup_executor):
            executor.shutdown(wait=False, cancel_futures=True)


def _resolve(future: asyncio.Future, result) -> None:
    if not future.done():  # delivered early already, or the client went away
        future.set_result(result)
