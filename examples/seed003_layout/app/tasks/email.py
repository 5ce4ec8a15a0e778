"""Sending email: a quick fire-and-forget job, retried when the mail server is away."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from flask import current_app

from app.extensions import tasks


# smtplib's errors are OSErrors, like a refused connection: retried with backoff.
@tasks.task(retry_for=(OSError,), max_retries=5)
def send_email(to: str, subject: str, body: str) -> str:
    config = current_app.config  # the app context comes with every task
    message = EmailMessage()
    message["From"] = config["MAIL_SENDER"]
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="example.test")
    message.set_content(body)
    with smtplib.SMTP(config["MAIL_SERVER"], config["MAIL_PORT"], timeout=10) as smtp:
        smtp.send_message(message)
    return str(message["Message-ID"])
