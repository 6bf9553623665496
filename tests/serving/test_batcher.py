"""The batcher answers every request it queues: batching, early delivery, failures, and the
moment a drain finishes while a new request arrives (a request queued then used to wait for
some later request to start a drain)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.api.batcher import Batcher


def echo(requests, deliver):
    return [f"answer {r}" for r in requests]


def run(coro, timeout: float = 5.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_client_that_asks_again_as_soon_as_it_is_answered_is_answered(workers):
    # The answer wakes the client before the finished drain's done-callback runs: the next
    # submit lands in exactly that gap, every time. Before the fix this hung.
    batcher = Batcher(echo, workers=workers)

    async def client():
        return [await batcher.submit(i) for i in range(20)]

    try:
        assert run(client()) == [f"answer {i}" for i in range(20)]
        assert batcher.draining == 0
    finally:
        batcher.close()


def test_requests_that_arrive_during_a_batch_form_the_next_batch():
    gate, sizes = threading.Event(), []

    def slow(requests, deliver):
        sizes.append(len(requests))
        gate.wait(5)
        return [r * 10 for r in requests]

    batcher = Batcher(slow, max_batch=64, workers=1)

    async def many():
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # the first batch (one request) is on its thread now
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await asyncio.gather(*rest)

    try:
        first, rest = run(many())
        assert first == 0 and rest == [i * 10 for i in range(1, 11)]
        assert sizes == [1, 10]
    finally:
        batcher.close()


def test_an_answer_delivered_early_does_not_wait_for_its_batch():
    release = threading.Event()

    def early_then_slow(requests, deliver):
        deliver(0, "early")
        release.wait(5)
        return ["late"] * len(requests)

    batcher = Batcher(early_then_slow, workers=1)

    async def one():
        answer = await batcher.submit("cold start")
        release.set()  # only reached because the answer came before the batch finished
        return answer

    try:
        assert run(one()) == "early"
    finally:
        release.set()
        batcher.close()


def test_a_failed_batch_fails_its_requests_and_the_next_batch_is_answered():
    calls = []

    def fails_once(requests, deliver):
        calls.append(list(requests))
        if len(calls) == 1:
            raise RuntimeError("triton went away")
        return [f"ok {r}" for r in requests]

    batcher = Batcher(fails_once, workers=1)

    async def two():
        with pytest.raises(RuntimeError, match="triton went away"):
            await batcher.submit("a")
        return await batcher.submit("b")

    try:
        assert run(two()) == "ok b"
        assert batcher.draining == 0
    finally:
        batcher.close()
