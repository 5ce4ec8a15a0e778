"""The exceptions flask-tasks raises.

Every exception is a :class:`TasksError`, with one base per area. Programmer misuse
(a wrong argument type, calling something outside an app) raises the matching built-in
(``TypeError``, ``ValueError``, ``RuntimeError``) instead.
"""

from __future__ import annotations


class TasksError(Exception):
    """The root of every exception flask-tasks raises on purpose."""


class ConfigError(TasksError, ValueError):
    """Raised when ``init_app`` finds a wrong, unknown or misspelled configuration key.

    The message names the key, the value it found and how to fix it.
    """


class PublishError(TasksError):
    """Raised when a task message could not be handed to the broker."""


class BrokerUnavailable(PublishError, ConnectionError):
    """Raised when the broker cannot be reached within ``TASKS_PUBLISH_TIMEOUT``.

    Nothing was sent: the task will not run unless you send it again.
    """


class TaskCancelled(TasksError):
    """Raised inside a task, by ``progress()``, once its cancellation was requested.

    Let it propagate: the task then ends in state ``cancelled``. Catch it only to clean
    up, and re-raise. It derives from ``Exception``, so a bare ``except Exception:`` in
    the task would swallow it.
    """
