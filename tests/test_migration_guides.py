"""The migration guides (docs/migrating/) cannot drift from the examples they quote.

Every code block of a guide is a diff whose ``+++`` line names an example file; the
"after" side of each hunk (its context and ``+`` lines) must appear in that file, as one
block of consecutive lines, hunks in order. Each guide names the tests that run its
examples (``tests/...py::test_name``), which must exist and start those examples. The
example the Flask-Executor guide quotes, ``examples/from_executor``, is run here: with the
command its README gives, and its own tests.
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from test_seed_examples import (
    EXAMPLES,
    call,
    cancel_once_started,
    example_env,
    serving,
    wait_record,
)
from workers import ROOT

GUIDES_DIR = ROOT / "docs" / "migrating"
GUIDES = sorted(GUIDES_DIR.glob("from-*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


# -- reading a guide ----------------------------------------------------------------------


@dataclass
class Hunk:
    after: list[str] = field(default_factory=list)
    """The hunk's context and added lines, without their first column."""
    changed: bool = False


@dataclass
class Diff:
    target: str
    """The example file the diff's ``+++`` line names, relative to the repository root."""
    hunks: list[Hunk]
    line: int
    """Where the block starts in the guide (1-based), for messages."""


def read_diffs(text: str) -> tuple[list[Diff], list[str]]:
    """The guide's diff blocks, and a problem for each code block that is not one."""
    diffs: list[Diff] = []
    problems: list[str] = []
    for match in FENCE.finditer(text):
        language, body = match.group(1), match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if language != "diff":
            problems.append(
                f"line {line}: a ```{language} block; every code block of a guide is a diff "
                "whose '+++' line names the example file it quotes"
            )
            continue
        lines = body.splitlines()
        targets = [entry[4:].split()[0] for entry in lines if entry.startswith("+++ ")]
        if len(targets) != 1 or not (lines[0].startswith("--- ") and lines[1].startswith("+++ ")):
            problems.append(f"line {line}: a diff must start with one '--- ...' and '+++ path'")
            continue
        hunks: list[Hunk] = []
        for entry in lines[2:]:
            if entry.startswith("@@"):
                hunks.append(Hunk())
                continue
            if not hunks:
                problems.append(f"line {line}: diff lines before the first '@@'")
                break
            mark, rest = entry[:1], entry[1:]
            if mark in ("", " "):
                hunks[-1].after.append(rest)
            elif mark == "+":
                hunks[-1].after.append(rest)
                hunks[-1].changed = True
            elif mark == "-":
                hunks[-1].changed = True
            else:
                problems.append(f"line {line}: {entry!r} is not a diff line")
        diffs.append(Diff(targets[0], hunks, line))
    return diffs, problems


def _normal(line: str, suffix: str) -> str:
    """A line as compared: code exactly (indentation counts); in Markdown and templates,
    without indentation, and a shell command without its trailing ``# comment``."""
    if suffix == ".py":
        return line.rstrip()
    line = line.strip()
    if suffix == ".md":
        line = re.sub(r"(?<=\S)\s+#\s.*$", "", line)
    return line


def find_block(needle: list[str], haystack: list[str], start: int) -> int:
    """Where ``needle`` begins as consecutive lines of ``haystack`` at or after ``start``;
    -1 when it does not."""
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def check_diff(diff: Diff) -> list[str]:
    """What is wrong between one diff block and the example file it names."""
    where = f"the diff at line {diff.line} ({diff.target})"
    path = ROOT / diff.target
    if not diff.target.startswith("examples/") or not path.is_file():
        return [f"{where}: '+++' must name an existing file under examples/"]
    if not diff.hunks:
        return [f"{where}: no hunk ('@@')"]
    suffix = path.suffix
    content = [_normal(line, suffix) for line in path.read_text().splitlines()]
    problems = []
    position = 0
    for number, hunk in enumerate(diff.hunks, 1):
        after = [_normal(line, suffix) for line in hunk.after]
        while after and not after[-1]:
            after.pop()
        if not any(after):
            continue  # only removals: nothing of it is left in the example
        found = find_block(after, content, position)
        if found < 0:
            elsewhere = find_block(after, content, 0)
            reason = "comes before the previous hunk's" if elsewhere >= 0 else "is not"
            problems.append(
                f"{where}, hunk {number}: its after side {reason} in {diff.target}:\n"
                + "\n".join(f"    {line}" for line in hunk.after)
            )
            continue
        position = found + len(after)
    return problems


def named_tests(text: str) -> list[tuple[str, str]]:
    return TEST_REF.findall(text)


def _functions(path: Path) -> dict[str, str]:
    """Test function name -> its source, for a test module."""
    source = path.read_text()
    tree = ast.parse(source)
    return {
        node.name: ast.get_source_segment(source, node) or ""
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
    }


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


# -- the guides and their examples --------------------------------------------------------


def test_there_is_a_guide_per_way_in() -> None:
    names = {guide.name for guide in GUIDES}
    assert names == {
        "from-celery-init-app.md",
        "from-flask-celeryext.md",
        "from-make-celery.md",
        "from-flask-executor.md",
    }


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.stem)
def test_every_snippet_is_in_the_example_it_names(guide: Path) -> None:
    diffs, problems = read_diffs(guide.read_text())
    assert len(diffs) >= 3, "a guide shows its changes as diffs"
    assert any(hunk.changed for diff in diffs for hunk in diff.hunks)
    for diff in diffs:
        problems += check_diff(diff)
    assert not problems, f"{guide.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.stem)
def test_each_guide_names_tests_that_run_its_examples(guide: Path) -> None:
    text = guide.read_text()
    refs = named_tests(text)
    assert refs, f"{guide.name} names no test (`tests/....py::test_name`) that runs its example"
    sources = []
    for module, name in refs:
        functions = _functions(ROOT / module)
        assert name in functions, f"{guide.name} names {module}::{name}, which does not exist"
        sources.append(functions[name])
    diffs, _ = read_diffs(text)
    folders = {diff.target.split("/")[1] for diff in diffs}
    for folder in folders:
        assert any(folder in source for source in sources), (
            f"{guide.name} quotes examples/{folder}, but none of the tests it names runs it"
        )


@pytest.mark.parametrize("page", [*GUIDES, GUIDES_DIR / "index.md"], ids=lambda path: path.stem)
def test_links_resolve(page: Path) -> None:
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if "://" in target:
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        assert resolved.exists(), f"{page.name}: broken link {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: no heading for {target}"


def test_the_index_and_the_docs_list_the_guides() -> None:
    index = (GUIDES_DIR / "index.md").read_text()
    for guide in GUIDES:
        assert f"]({guide.name})" in index
    assert "](docs/migrating/index.md)" in (ROOT / "README.md").read_text()
    assert "](migrating/index.md)" in (ROOT / "docs" / "index.md").read_text()


def test_a_snippet_that_drifts_is_caught() -> None:
    guide = GUIDES_DIR / "from-flask-executor.md"
    text = guide.read_text()
    good, _ = read_diffs(text)
    assert not check_diff(good[0])
    drifted, _ = read_diffs(text.replace("+tasks = Tasks()", "+tasks = Tasks(app)", 1))
    assert check_diff(drifted[0])
    reordered = Diff(good[0].target, list(reversed(good[0].hunks)), good[0].line)
    assert "comes before" in "".join(check_diff(reordered))
    inverted, problems = read_diffs("```python\nx = 1\n```\n")
    assert not inverted and problems


# -- examples/from_executor, run for real ---------------------------------------------------

FROM_EXECUTOR = EXAMPLES / "from_executor"


def readme_command(folder: Path) -> list[str]:
    """The one command an example's README gives to start it (an indented line)."""
    commands = re.findall(r"^    (flask .+)$", (folder / "README.md").read_text(), re.MULTILINE)
    assert commands, f"{folder.name}/README.md gives no command"
    return commands[0].split()


def test_from_executor_example_runs_on_the_embedded_default(tmp_path: Path) -> None:
    argv = readme_command(FROM_EXECUTOR)
    assert argv == ["flask", "--app", "exports", "run"]
    env = example_env(tmp_path, FLASK_EXPORT_ROW_SECONDS="0.02")
    with serving("from_executor", "exports", env) as (proc, base):
        assert "task-progress" in call(base + "/").text
        sent = call(
            f"{base}/exports",
            "POST",
            form={"customer": "Ana", "rows": "20"},
            headers={"Accept-Language": "fr, en;q=0.5"},
        )
        stopped = call(f"{base}/exports", "POST", form={"rows": "1000"})
        assert sent.status == stopped.status == 202
        task_id = sent.json()["id"]
        assert sent.headers["Location"] == sent.json()["status"] == f"/tasks/{task_id}"

        stopped_id = stopped.json()["id"]
        cancel_once_started(base, stopped_id)

        record = wait_record(base, task_id)
        cancelled = wait_record(base, stopped_id)
        download = call(f"{base}/exports/{task_id}.csv")
        unknown = call(f"{base}/exports/no-such-task.csv")
        cancelled_file = call(f"{base}/exports/{stopped_id}.csv")

    assert record["state"] == "succeeded", record
    assert record["name"] == "exports.export_orders"
    assert record["result"] == {
        "rows": 20,
        "language": "fr",  # Accept-Language travelled (request_context=True)
        "url": f"{base}/exports/{task_id}.csv",  # url_for(_external=True) in the task
    }
    assert record["progress"]["current"] == record["progress"]["total"] == 20
    rows = list(csv.reader(io.StringIO(download.text)))
    assert download.status == 200
    assert rows[0] == ["commande", "client", "montant"]
    assert len(rows) == 21 and rows[1][:2] == ["1000", "Ana"]
    assert cancelled["state"] == "cancelled"
    assert cancelled["progress"]["current"] < 1000
    assert unknown.status == cancelled_file.status == 404
    # TASKS_CELERY = {"worker_concurrency": 2}, where the app had EXECUTOR_MAX_WORKERS = 2
    assert "development worker running 2 threads" in proc.output
    assert (tmp_path / "tasks.sqlite3").exists()


def test_from_executor_own_tests_pass() -> None:
    """``pytest examples/from_executor/tests``, as its README says. Only flask-tasks' plugin
    is loaded: the other plugins installed for this suite cost seconds and are not used."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLASK_APP")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    argv = [
        "-m",
        "pytest",
        "examples/from_executor/tests",
        "-q",
        "-p",
        "flask_tasks.pytest_plugin",
    ]
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout, result.stdout[-2000:]
