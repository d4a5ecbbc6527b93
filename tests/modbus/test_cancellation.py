"""A stopping gateway stops its Modbus links even when pymodbus swallows the cancellation.

pymodbus awaits connects and answers with ``asyncio.wait_for``; on Python 3.11 (the target's) that returns
the result instead of raising when the stop and the answer arrive in the same loop iteration. A bus owner
or a poller then served on, and the gateway's stop waited for it forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from drivers.modbus.link import raise_swallowed_cancellation


async def wait_for_the_answer(answer: asyncio.Future[str]) -> str:
    return await asyncio.wait_for(answer, 5)  # as pymodbus awaits a slave's answer


async def swallow_the_stop(answer: asyncio.Future[str]) -> str:
    # What wait_for does on 3.11 when the answer is already there as the cancellation arrives.
    try:
        return await answer
    except asyncio.CancelledError:
        return answer.result()


async def _answer_and_stop_together(
    wait: Callable[[asyncio.Future[str]], Awaitable[str]], guarded: bool
) -> asyncio.Task[str]:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    async def poller() -> str:
        result = await wait(answer)
        if guarded:
            raise_swallowed_cancellation()
        return result

    task = asyncio.create_task(poller())
    await asyncio.sleep(0)  # the poller waits for its answer
    answer.set_result("registers")
    task.cancel()  # the gateway stops in the same loop iteration as the answer arrives
    await asyncio.wait([task])
    return task


async def test_a_swallowed_stop_leaves_the_poller_running_on() -> None:
    task = await _answer_and_stop_together(swallow_the_stop, guarded=False)
    # What the guard is for: the task ran on as if never cancelled (still marked as cancelling).
    assert task.result() == "registers"


@pytest.mark.parametrize("wait", [wait_for_the_answer, swallow_the_stop])
async def test_the_link_raises_the_swallowed_cancellation_again(
    wait: Callable[[asyncio.Future[str]], Awaitable[str]],
) -> None:
    task = await _answer_and_stop_together(wait, guarded=True)
    with pytest.raises(asyncio.CancelledError):
        task.result()


async def test_a_task_that_was_not_cancelled_goes_on() -> None:
    raise_swallowed_cancellation()  # no exception: nothing asked this task to stop
