"""A stopping gateway stops its Modbus links even when pymodbus swallows the cancellation.

pymodbus awaits connects and answers with ``asyncio.wait_for``; on Python 3.11 that returns the result
instead of raising when the stop and the answer arrive in the same loop iteration. A bus owner or a poller
then served on, and the gateway's stop waited for it forever.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from drivers.modbus.link import raise_swallowed_cancellation


async def _answer_and_stop_together(guarded: bool) -> asyncio.Task[str]:
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str] = loop.create_future()

    async def poller() -> str:
        result = await asyncio.wait_for(answer, 5)  # as pymodbus awaits a slave's answer
        if guarded:
            raise_swallowed_cancellation()
        return result

    task = asyncio.create_task(poller())
    await asyncio.sleep(0)  # the poller waits for its answer
    answer.set_result("registers")
    task.cancel()  # the gateway stops in the same loop iteration as the answer arrives
    await asyncio.wait([task])
    return task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="asyncio.wait_for keeps cancellations from 3.12")
async def test_wait_for_can_swallow_a_cancellation_that_arrives_with_the_answer() -> None:
    task = await _answer_and_stop_together(guarded=False)
    # What the guard is for: the task ran on as if never cancelled (still marked as cancelling).
    assert task.result() == "registers"


async def test_the_link_raises_the_swallowed_cancellation_again() -> None:
    task = await _answer_and_stop_together(guarded=True)
    with pytest.raises(asyncio.CancelledError):
        task.result()


async def test_a_task_that_was_not_cancelled_goes_on() -> None:
    raise_swallowed_cancellation()  # no exception: nothing asked this task to stop
