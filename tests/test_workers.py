"""WorkerPool: sync agents run in worker threads, results delivered in batches to the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from nexus_lab.platform.workers import WorkerPool


@pytest.fixture
def pool():
    p = WorkerPool(max_workers=4)
    yield p
    p.close()


def test_results_and_exceptions_come_back(pool):
    async def main():
        assert await pool.run(lambda: 41 + 1) == 42
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
        return await pool.run(lambda: threading.current_thread().name)

    assert asyncio.run(main()).startswith("nexus-agent-")


def test_many_concurrent_calls_all_complete_with_their_own_result(pool):
    async def main():
        return await asyncio.gather(*(pool.run(lambda i=i: i * i) for i in range(2000)))

    assert asyncio.run(main()) == [i * i for i in range(2000)]
    assert pool.threads <= 4


def test_a_blocked_call_does_not_block_the_loop_or_other_calls(pool):
    release = threading.Event()

    async def main():
        slow = asyncio.ensure_future(pool.run(lambda: release.wait(30) and "slow"))
        await asyncio.sleep(0)  # the slow call is now running in a worker
        fast = await pool.run(lambda: "fast")  # another worker answers meanwhile
        assert not slow.done()
        release.set()
        return fast, await slow

    assert asyncio.run(main()) == ("fast", "slow")


def test_threads_are_bounded_and_queued_calls_still_run():
    pool = WorkerPool(max_workers=2)
    gate = threading.Event()
    try:
        async def main():
            tasks = [asyncio.ensure_future(pool.run(lambda i=i: gate.wait(30) and i)) for i in range(6)]
            await asyncio.sleep(0.05)
            started = pool.threads
            gate.set()
            return started, await asyncio.gather(*tasks)

        started, results = asyncio.run(main())
        assert started == 2
        assert results == list(range(6))
    finally:
        pool.close()


def test_a_cancelled_caller_does_not_break_delivery(pool):
    gate = threading.Event()

    async def main():
        task = asyncio.ensure_future(pool.run(lambda: gate.wait(30)))
        await asyncio.sleep(0.01)
        task.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await pool.run(lambda: "still fine")

    assert asyncio.run(main()) == "still fine"


def test_one_pool_serves_several_event_loops(pool):
    results: dict[int, list[int]] = {}

    def loop_thread(k: int) -> None:
        async def main():
            return await asyncio.gather(*(pool.run(lambda i=i: k * 1000 + i) for i in range(200)))

        results[k] = asyncio.run(main())

    threads = [threading.Thread(target=loop_thread, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert {k: v == [k * 1000 + i for i in range(200)] for k, v in results.items()} == {0: True, 1: True, 2: True}


def test_close_stops_the_workers_and_refuses_new_calls():
    pool = WorkerPool(max_workers=3, name="close-test")
    asyncio.run(pool.run(lambda: None))
    threads = [t for t in threading.enumerate() if t.name.startswith("close-test-")]
    assert threads
    pool.close()
    pool.close()  # idempotent
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(pool.run(lambda: None))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_workers_is_validated(bad):
    with pytest.raises(ValueError, match="max_workers"):
        WorkerPool(max_workers=bad)


def test_a_key_holds_at_most_its_limit_of_threads_and_the_rest_wait(pool):
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def blocked() -> str:
        entered.release()
        gate.wait(30)
        return "done"

    async def main():
        calls = [asyncio.ensure_future(pool.run(blocked, key="k", limit=2)) for _ in range(5)]
        other = await pool.run(lambda: "free")  # another key is not held up
        for _ in range(2):
            await asyncio.get_running_loop().run_in_executor(None, entered.acquire)
        assert pool.running("k") == 2
        assert not entered.acquire(blocking=False)  # the other three wait without a thread
        gate.set()
        return other, await asyncio.gather(*calls)

    other, results = asyncio.run(main())
    assert other == "free" and results == ["done"] * 5
    assert pool.running("k") == 0


def test_a_waiting_call_whose_caller_gave_up_never_runs(pool):
    gate = threading.Event()
    ran = []

    async def main():
        first = asyncio.ensure_future(pool.run(lambda: gate.wait(30), key="k", limit=1))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.run(lambda: ran.append(1), key="k", limit=1), 0.05)
        gate.set()
        await first
        await pool.run(lambda: None, key="k", limit=1)  # the slot came back

    asyncio.run(main())
    assert ran == []
    assert pool.running("k") == 0
