"""asyncio: awaiting runs and iterating their output without blocking the loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from opsconductor import Conductor, ExecutionError, LogLine, exec_


@pytest.mark.asyncio
async def test_wait_async_does_not_block_the_loop(oc: Conductor) -> None:
    run = oc.exec("sleep 1; echo done")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    status = await run.wait_async()
    t.cancel()
    assert status == "succeeded"
    assert ticks > 20, f"the event loop was blocked (only {ticks} ticks in ~1s)"


@pytest.mark.asyncio
async def test_async_logs_are_live(oc: Conductor) -> None:
    run = oc.exec("echo a; sleep 2; echo b >&2")
    started = time.monotonic()
    seen = []
    async for line in run.logs_async():
        assert isinstance(line, LogLine)
        seen.append((line.stream, line.text, round(time.monotonic() - started, 1)))
    assert [(s, t) for s, t, _ in seen] == [("stdout", "a"), ("stderr", "b")]
    assert seen[0][2] < 1.5, f"the first line came late: {seen}"
    assert await run.wait_async() == "succeeded"


@pytest.mark.asyncio
async def test_concurrent_runs_with_asyncio(oc: Conductor) -> None:
    runs = [oc.exec(f"echo run-{i}; sleep 0.3; exit {i % 2}") for i in range(6)]

    async def output(r: object) -> list:
        return [line.text async for line in r.logs_async()]  # type: ignore[attr-defined]

    statuses = await asyncio.gather(*(r.wait_async() for r in runs))
    outputs = await asyncio.gather(*(output(r) for r in runs))
    assert statuses == ["succeeded", "failed"] * 3
    assert outputs == [[f"run-{i}"] for i in range(6)]


@pytest.mark.asyncio
async def test_wait_async_check_and_timeout(oc: Conductor) -> None:
    with pytest.raises(ExecutionError) as e:
        await oc.exec("exit 2").wait_async(check=True)
    assert e.value.status == "failed"
    slow = oc.exec("sleep 1.5")
    with pytest.raises(TimeoutError):
        await slow.wait_async(timeout=0.2)
    assert await slow.wait_async(timeout=30) == "succeeded"


@pytest.mark.asyncio
async def test_cancelling_an_await_leaves_the_run(oc: Conductor) -> None:
    run = oc.exec("sleep 1")
    task = asyncio.ensure_future(run.wait_async())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert run.status == "running"
    assert await run.wait_async() == "succeeded"


@pytest.mark.asyncio
async def test_wait_async_executes_when_there_are_no_workers(oc0: Conductor) -> None:
    oc0.define_job({"name": "j", "steps": [exec_("echo here")]})
    run = oc0.run("j")
    assert await run.wait_async() == "succeeded"
    assert [line.text async for line in run.logs_async()] == ["here"]
