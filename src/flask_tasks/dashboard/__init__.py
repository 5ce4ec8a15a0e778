"""The dashboard: every task, with live state, filters, cancel and retry, for staff.

Mounted at ``<TASKS_URL_PREFIX>/dashboard`` when ``TASKS_DASHBOARD`` is on. See
docs/dashboard.md. :mod:`.data` computes what the pages show (no Flask), :mod:`.views`
renders it.
"""

from .views import make_blueprint as make_blueprint
