"""The pull-request workflow (.github/workflows/pull-request.yaml) cannot run here: its syntax is checked
against GitHub's workflow schema (check-jsonschema's vendored copy, offline), and the command it calls with
the options it passes exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from discovla.cli import app

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "pull-request.yaml"

pytest.importorskip("check_jsonschema")


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


def _steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["review"]["steps"]


def test_workflow_matches_githubs_schema(tmp_path: Path) -> None:
    done = _validate(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = yaml.safe_load(WORKFLOW.read_text())
    broken["jobs"]["review"]["step"] = broken["jobs"]["review"].pop("steps")  # a typo GitHub would refuse
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert _validate(tmp_path / "broken.yaml").returncode != 0


def test_workflow_reproduces_then_posts_the_comment_it_writes() -> None:
    runs = [s.get("run", "") for s in _steps()]
    uses = [s.get("uses", "").split("@")[0] for s in _steps()]
    assert {"actions/checkout", "actions/setup-python", "iterative/setup-cml"} <= set(uses)
    order = [
        next(i for i, r in enumerate(runs) if needle in r) for needle in ("make repro", "pr-summary", "cml ")
    ]
    assert order == sorted(order), runs
    summary = shlex.split(re.sub(r"\$\{\{[^}]*\}\}", "X", runs[order[1]]))
    assert summary[1] == "pr-summary"
    options = [a for a in summary if a.startswith("--")]
    help_text = CliRunner().invoke(app, ["pr-summary", "--help"], env={"COLUMNS": "200"}).stdout
    assert all(o in help_text for o in options), (options, help_text)
    out = summary[summary.index("--out") + 1]
    assert runs[order[2]].split()[-1] == out  # cml posts the file pr-summary wrote
