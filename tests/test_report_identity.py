"""The report's identity: dirty means code or params changed, not the files the pipeline itself rewrote."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from discovla.report.identity import describe_commit, git_state, pipeline_outputs

DVC = {
    "stages": {
        "train": {
            "cmd": "python stages/train.py",
            "deps": ["discovla/train.py"],
            "outs": ["models/discovla"],
            "metrics": [{"metrics/train.json": {"cache": False}}],
            "plots": [{"metrics/curve.csv": {"x": "step"}}],
        }
    }
}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for rel, text in {
        "dvc.yaml": yaml.safe_dump(DVC),
        "dvc.lock": "schema: '2.0'\n",
        "params.yaml": "train: {seed: 1}\n",
        "discovla/train.py": "x = 1\n",
        "metrics/train.json": "{}\n",
        "metrics/curve.csv": "step\n1\n",
        "models/discovla/config.json": "{}\n",
    }.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _git(repo.parent, "init", "-q", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return repo


def test_pipeline_outputs_are_read_from_dvc_yaml(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert pipeline_outputs(repo) == [
        "dvc.lock",
        "metrics/curve.csv",
        "metrics/train.json",
        "models/discovla",
    ]
    assert pipeline_outputs(tmp_path) == ["dvc.lock"]  # no dvc.yaml


def test_rewritten_outputs_are_not_dirty_but_code_and_params_are(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert git_state(repo) == {"commit": head, "dirty": False}
    for rel in ("dvc.lock", "metrics/train.json", "metrics/curve.csv", "models/discovla/config.json"):
        (repo / rel).write_text((repo / rel).read_text() + "\n")  # what `dvc repro` rewrites
    assert git_state(repo) == {"commit": head, "dirty": False}
    assert describe_commit(git_state(repo)) == head
    (repo / "params.yaml").write_text("train: {seed: 2}\n")  # `dvc exp run -S train.seed=2`
    assert git_state(repo)["dirty"] is True
    _git(repo, "checkout", "-q", "params.yaml")
    (repo / "discovla/train.py").write_text("x = 2\n")
    state = git_state(repo)
    assert state["dirty"] is True and describe_commit(state).endswith(
        "(dirty: uncommitted changes to code or params)"
    )


def test_outside_git_the_commit_is_unknown(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"commit": "unknown", "dirty": None}
