"""What the local SMTP debugging server received (development only)."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from app import mailbox

bp = Blueprint("mailbox", __name__)


@bp.get("/mailbox")
def inbox() -> str:
    return render_template(
        "mailbox.html",
        messages=mailbox.received(current_app),
        enabled=current_app.config["MAIL_DEBUG_SERVER"],
    )
