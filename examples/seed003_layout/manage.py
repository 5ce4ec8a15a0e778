"""The development entry point, and the app's own commands:

flask --app manage run
flask --app manage mailbox        # what the local SMTP server received
"""

import os

import click
from app import create_app, mailbox

app = create_app(os.environ.get("APP_CONFIG", "development"))


@app.cli.command("mailbox")
def show_mailbox() -> None:
    """List the messages the local SMTP server received."""
    for message in mailbox.received(app):
        click.echo(f"{message.date}  {message.to:<30}  {message.subject}")
