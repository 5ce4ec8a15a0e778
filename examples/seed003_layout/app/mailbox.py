"""A local SMTP server for development (aiosmtpd, like ``python -m aiosmtpd -n``).

It keeps each message it receives in a Maildir in the instance folder, which the
``/mailbox`` page reads. The web process starts it on its first request: not at import,
so a worker process, a test or the reloader's watcher process never opens the port.
"""

from __future__ import annotations

import atexit
import email
import email.policy
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from flask import Flask

log = logging.getLogger(__name__)
_started: set[tuple[str, int]] = set()
_lock = threading.Lock()


@dataclass
class Received:
    sender: str
    to: str
    subject: str
    date: str
    body: str


def maildir_path(app: Flask) -> str:
    return os.path.join(app.instance_path, "mailbox")


def init_app(app: Flask) -> None:
    if not app.config["MAIL_DEBUG_SERVER"]:
        return

    @app.before_request
    def start_debug_server() -> None:
        address = (app.config["MAIL_SERVER"], int(app.config["MAIL_PORT"]))
        if address in _started:
            return
        with _lock:
            if address not in _started:
                _start(address, maildir_path(app))
                _started.add(address)


def _start(address: tuple[str, int], path: str) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Mailbox

    os.makedirs(os.path.dirname(path), exist_ok=True)  # the Maildir itself is made below
    controller = Controller(Mailbox(path), hostname=address[0], port=address[1])
    try:
        controller.start()
    except OSError as exc:  # the port is taken: another process of the app runs it
        log.warning("no local SMTP server on %s:%s: %s", *address, exc)
        return
    atexit.register(controller.stop)
    log.warning("local SMTP server on %s:%s, saving mail to %s", *address, path)


def _read(path: str) -> Received:
    with open(path, "rb") as file:
        message: Any = email.message_from_binary_file(file, policy=email.policy.default)
    body = message.get_body(("plain",))
    return Received(
        sender=str(message["From"]),
        to=str(message["To"]),
        subject=str(message["Subject"]),
        date=message["Date"].datetime.strftime("%Y-%m-%d %H:%M:%S"),
        body=body.get_content() if body is not None else "",
    )


def received(app: Flask) -> list[Received]:
    """The messages the local SMTP server received, newest first."""
    path = maildir_path(app)
    files = [
        entry
        for folder in ("new", "cur")  # a Maildir: delivered messages are files in these
        if os.path.isdir(os.path.join(path, folder))
        for entry in os.scandir(os.path.join(path, folder))
        if entry.is_file()
    ]
    files.sort(key=lambda entry: entry.stat().st_mtime_ns, reverse=True)
    return [_read(entry.path) for entry in files]
