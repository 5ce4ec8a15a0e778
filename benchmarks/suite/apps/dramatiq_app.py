"""Flask-Dramatiq (Dramatiq), Redis broker, Dramatiq's ``Results`` middleware on Redis.

As its docs show: ``DRAMATIQ_BROKER = "dramatiq.brokers.redis:RedisBroker"`` and
``DRAMATIQ_BROKER_URL`` in the config, actors declared with ``@dramatiq.actor``, sent with
``.send()``; results as Dramatiq's docs show: ``Results(backend=RedisBackend(...))`` added
to the middleware, ``store_results=True`` on the actor. Worker: ``flask worker
--processes 2`` (8 threads each, Dramatiq's default). Dramatiq has no status route: this
one is what its docs lead to, ``backend.get_result(message, block=False)`` on the message
rebuilt from its id, queue and actor (a missing result means "not finished yet": an
unknown id cannot be told from a pending one). Dramatiq has no progress API.
"""

from __future__ import annotations

from typing import Any

from dramatiq import Message
from dramatiq.middleware import default_middleware
from dramatiq.results import ResultMissing, Results
from dramatiq.results.backends import RedisBackend
from flask import Flask
from flask_dramatiq import Dramatiq

from ._common import REDIS_URL, RESULT_TTL_SECONDS

QUEUE = "default"

results_backend = RedisBackend(url=REDIS_URL)
# Results kept 1 h (Dramatiq's default is 10 min) so that the status workload, run after
# the drains, finds them; how long a result is kept does not change what storing it costs.
results = Results(backend=results_backend, result_ttl=RESULT_TTL_SECONDS * 1000)
dramatiq = Dramatiq(middleware=[m() for m in default_middleware] + [results])


@dramatiq.actor(store_results=True, queue_name=QUEUE)
def noop() -> None:
    return None


def _message(message_id: str) -> Message[Any]:
    return Message(
        queue_name=QUEUE, actor_name="noop", args=(), kwargs={}, options={}, message_id=message_id
    )


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        DRAMATIQ_BROKER="dramatiq.brokers.redis:RedisBroker",
        DRAMATIQ_BROKER_URL=REDIS_URL,
    )
    dramatiq.init_app(app)

    @app.post("/submit")
    def submit() -> tuple[dict[str, str], int]:
        return {"id": noop.send().message_id}, 202

    @app.get("/messages/<message_id>")
    def message_status(message_id: str) -> dict[str, Any]:
        try:
            result = results_backend.get_result(_message(message_id), block=False)
        except ResultMissing:
            return {"id": message_id, "done": False}
        return {"id": message_id, "done": True, "result": result}

    return app


# -- the driver's side --------------------------------------------------------------------


def enqueue(app: Flask, n: int) -> list[str]:
    return [noop.send().message_id for _ in range(n)]


def finished(app: Flask, ids: list[str]) -> int:
    client = results_backend.client
    keys = [results_backend.build_message_key(_message(i)) for i in ids]
    return sum(int(client.exists(*keys[i : i + 1000])) for i in range(0, len(keys), 1000))


def purge(app: Flask) -> None:
    dramatiq.broker.flush_all()
