"""A page with a Deploy button per server, and the route it posts to."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, render_template, request, url_for

from .deployments import deploy

bp = Blueprint("deployer", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html", servers=current_app.config["DEPLOY_SERVERS"])


@bp.post("/servers/<server>/deploy")
def start_deploy(server: str) -> Any:
    if server not in current_app.config["DEPLOY_SERVERS"]:
        abort(404)
    version = request.args.get("version", "latest")
    handle = deploy.delay(server, version)
    status = url_for("tasks.status", task_id=handle.id)
    return {"id": handle.id, "status": status}, 202, {"Location": status}
