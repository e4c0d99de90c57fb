"""gateway.turns: who waits in one turn of the event loop goes on together, after the
callbacks already scheduled in that turn, and a cancelled waiter holds nobody up."""

from __future__ import annotations

import asyncio

from gateway.turns import TurnGate


async def test_waiters_of_one_turn_go_on_together_after_the_turns_work() -> None:
    gate = TurnGate()
    order: list[str] = []

    async def answer(name: str) -> None:
        order.append(f"{name} ready")
        await gate.end_of_turn()
        order.append(f"{name} sent")

    tasks = [asyncio.create_task(answer(n)) for n in ("a", "b", "c")]
    await asyncio.gather(*tasks)
    assert order == ["a ready", "b ready", "c ready", "a sent", "b sent", "c sent"]


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    gate = TurnGate()
    first = asyncio.create_task(gate.end_of_turn())
    second = asyncio.create_task(gate.end_of_turn())
    await asyncio.sleep(0)  # both wait now
    first.cancel()
    await asyncio.wait_for(second, 5)
    assert first.cancelled() and second.done() and not second.cancelled()


async def test_the_next_turn_has_its_own_release() -> None:
    gate = TurnGate()
    await asyncio.wait_for(gate.end_of_turn(), 5)
    await asyncio.wait_for(gate.end_of_turn(), 5)  # a new call_soon, not a stale list
