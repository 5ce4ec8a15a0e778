"""Extension objects, created before any app (``create_app`` calls their ``init_app``).

``tasks`` lives here rather than in ``app/__init__.py``: importing the ``app.tasks``
package would replace an ``app.tasks`` attribute of that name.
"""

from flask_tasks import Tasks

tasks = Tasks()
