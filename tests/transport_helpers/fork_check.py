"""Check that a forked child never uses its parent's engine or releases its parent's rows.

Usage: ``python fork_check.py URL``; exits 0 and prints ``ok`` when every check passes.
Run as its own process so the fork happens outside pytest.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from kombu import Connection

import flask_tasks.transport  # noqa: F401  (registers the tasksdb+ scheme)


def child(url: str, queue: Any, held: Any, parent_engine: Any) -> None:
    channel = queue.channel
    # The inherited channel opens a new engine in the child.
    engine = channel._open()
    assert engine is not parent_engine, "the child reused its parent's engine"
    # The parent's held message stays the parent's: requeueing it here does nothing.
    held.requeue()
    channel.close()
    assert channel._size("fork") == 0, "the child released a row its parent holds"
    with Connection(url) as connection:
        connection.SimpleQueue("fork").put({"from": "child"})


def main(url: str) -> None:
    with Connection(url, transport_options={"visibility_timeout": 60}) as connection:
        queue = connection.SimpleQueue("fork")
        queue.put({"from": "parent"})
        held = queue.get(timeout=5)  # unacked: the parent holds the row, heartbeating it
        parent_engine = queue.channel._open()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child(url, queue, held, parent_engine)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
        assert queue.channel._open() is parent_engine
        message = queue.get(timeout=5)
        assert message.payload == {"from": "child"}, message.payload
        message.ack()
        held.ack()
        assert queue.qsize() == 0
        queue.close()
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
