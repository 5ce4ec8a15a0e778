"""Sign-up: the view answers at once, the welcome email is a background task."""

from __future__ import annotations

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from app.tasks import send_email

bp = Blueprint("account", __name__)


@bp.get("/")
def signup_form() -> str:
    return render_template("signup.html")


@bp.post("/signup")
def signup() -> Response:
    address = request.form.get("email", "").strip()
    name = request.form.get("name", "").strip() or "there"
    if "@" not in address:
        abort(400, "an email address is needed")
    handle = send_email.delay(
        address,
        "Welcome aboard",
        f"Hello {name},\n\nyour account is ready. Sign in any time.\n",
    )
    return redirect(url_for("account.welcome", task_id=handle.id), 303)


@bp.get("/welcome/<task_id>")
def welcome(task_id: str) -> str:
    return render_template("welcome.html", task_id=task_id)
