"""The side-by-side benchmark suite: flask-tasks and the other Flask task integrations.

    make bench          # installs benchmarks/requirements.txt (and wrk), full run, ~25 min;
                        # rewrites docs/benchmarks.md, docs/benchmarks/*.png, results.json
    make bench-quick    # flask-tasks vs the official pattern, small sizes, < 2 min;
                        # prints the ratios, writes nothing (CI shows it, never gates on it)
    .venv/bin/python -m benchmarks.suite [--quick] [--integrations flask-tasks,official]
        [--workloads submit,e2e,progress,drain,status,memory] [--no-report]

Needs the local Redis (the suite uses database 12 and empties it before and after) and wrk.

* ``integrations.py``: who is compared, how each web app and worker is started, its setup;
* ``apps/``: one app module per integration (app factory, submit and status routes);
* ``runner.py``: the workloads; ``driver.py``: a subprocess acting inside one integration;
* ``procs.py``: subprocesses in their own groups, killed whole at the end; memory;
* ``loadgen.py``: wrk and a keep-alive client; ``redismon.py``: store writes from MONITOR;
* ``report.py``: ratios, the quick printout, the markdown page and plots.
"""
