"""For a WSGI server, in production:  gunicorn wsgi:app"""

import os

from app import create_app

app = create_app(os.environ.get("APP_CONFIG", "production"))
