"""Items handed from another thread into a loop's queues (server/inference.py: LoopPost): all
arrive, each queue's in order, with fewer wake-ups of the loop than items when they come together;
and the runner's Channel writes a batch of messages as one (runtime/protocol.py); and when a
generation whose client does not take its events is cancelled (inference.stalled)."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from modelyard.runtime.protocol import Channel
from modelyard.server.inference import (
    MAX_UNREAD_TOKENS,
    MAX_UNREAD_TOKENS_READING,
    STALL_S,
    LoopPost,
    stalled,
)


def test_items_from_another_thread_arrive_in_order_with_fewer_wake_ups() -> None:
    async def main() -> tuple[list[int], list[int], int]:
        loop = asyncio.get_running_loop()
        post = LoopPost(loop)
        wake_ups = 0
        hand_over = post._hand_over

        def counted() -> None:
            nonlocal wake_ups
            wake_ups += 1
            hand_over()

        post._hand_over = counted  # type: ignore[method-assign]
        first: asyncio.Queue[int] = asyncio.Queue()
        second: asyncio.Queue[int] = asyncio.Queue()

        def produce() -> None:  # a runner's reader thread: a step's events for two streams at once
            for step in range(50):
                post(first, step)
                post(second, step)

        thread = threading.Thread(target=produce)
        thread.start()
        got_first = [await first.get() for _ in range(50)]
        got_second = [await second.get() for _ in range(50)]
        thread.join()
        return got_first, got_second, wake_ups

    got_first, got_second, wake_ups = asyncio.run(main())
    assert got_first == list(range(50)) and got_second == list(range(50))
    assert 1 <= wake_ups < 100


def test_a_channel_batch_goes_out_as_one_write_and_reads_as_messages() -> None:
    left, right = socket.socketpair()
    sender, receiver = Channel(left), Channel(right)
    send, flush = sender.batch()
    send({"event": "token", "id": 1, "text": "a"})
    send({"event": "token", "id": 2, "text": "b"})
    right.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing written before the flush
        right.recv(1)
    right.setblocking(True)
    flush()
    flush()  # nothing held: nothing written
    assert [receiver.receive(), receiver.receive()] == [
        {"event": "token", "id": 1, "text": "a"},
        {"event": "token", "id": 2, "text": "b"},
    ]
    sender.close()
    assert receiver.receive() is None
    receiver.close()


@pytest.mark.parametrize(
    ("unread", "since_read_s", "cancelled"),
    [
        (0, 3600.0, False),  # nothing waiting: a client that is quiet because nothing came
        (MAX_UNREAD_TOKENS - 1, 3600.0, False),
        (MAX_UNREAD_TOKENS, STALL_S, True),  # a client that reads nothing
        (MAX_UNREAD_TOKENS, STALL_S - 0.1, False),  # a slow link that still reads
        (MAX_UNREAD_TOKENS_READING - 1, 0.0, False),
        (MAX_UNREAD_TOKENS_READING, 0.0, True),  # reading, but the backlog is past the memory bound
    ],
)
def test_a_generation_is_cancelled_when_its_client_stops_reading_not_when_it_reads_slowly(
    unread: int, since_read_s: float, cancelled: bool
) -> None:
    assert stalled(unread, since_read_s) is cancelled


def test_with_logprobs_a_slow_reader_gets_no_more_room_than_a_stalled_one() -> None:
    """Found in review: 262,144 tokens with top_logprobs 20 held some 2 GiB."""
    assert stalled(MAX_UNREAD_TOKENS, 0.0, with_logprobs=True)
    assert not stalled(MAX_UNREAD_TOKENS - 1, 3600.0, with_logprobs=True)
