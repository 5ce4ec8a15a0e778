"""The load and soak suite (issue 7, item 5): ``python -m benchmarks.soak`` or ``make soak``.

Many tasks that report progress, through four worker processes, while concurrent clients
poll ``GET /tasks/<id>`` on the app served by gunicorn; then checks that every task ended,
that the store holds exactly one record per task, that no process grew in memory beyond a
bound, and that the status p99 stayed under a bound. See docs/reliability.md.
"""
