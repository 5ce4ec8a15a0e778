"""One of many processes that start on a fresh broker file at the same moment.

Usage: ``python race_consumer.py URL``.  Prints ``ready`` once imported, waits for a line
on stdin (the start signal, sent to all processes at once), then declares a queue,
publishes one message, consumes one message and acks it.
"""

from __future__ import annotations

import sys

from kombu import Connection

import flask_tasks.transport  # noqa: F401  (registers the tasksdb+ scheme)


def main(url: str) -> None:
    print("ready", flush=True)
    sys.stdin.readline()
    with Connection(url, transport_options={"polling_interval": 0.01}) as connection:
        queue = connection.SimpleQueue("race")
        queue.put({"hello": "world"})
        message = queue.get(timeout=30)
        message.ack()
        queue.close()


if __name__ == "__main__":
    main(sys.argv[1])
