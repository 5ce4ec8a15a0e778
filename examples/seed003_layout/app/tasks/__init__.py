"""The app's background tasks, one module per subject; views import them from here."""

from .email import send_email as send_email
