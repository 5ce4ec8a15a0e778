"""One app module per integration, each imported only by its own processes.

Every module exposes ``create_app()``, a Flask app factory with

* ``POST /submit``: enqueue one no-op task, answer ``202 {"id": ...}``;
* a status route: the integration's own (flask-tasks: ``GET /tasks/<id>``), or for peers
  without one, the route a user would write from their docs;

and, for the driver (``benchmarks/suite/driver.py``, run in a subprocess per integration so
that two Celery apps never share a process): ``enqueue(app, n)``, ``finished(app, ids)``,
``purge(app)`` and ``start_progress(app, n, token, report)``. How each worker is started is
in ``benchmarks/suite/integrations.py``.
"""
