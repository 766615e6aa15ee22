"""The pull-request view: `discovla pr-summary` on a small DVC repository with two commits."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from discovla.cli import app
from discovla.pr_diffs import NO_CHANGE, changed_plots
from discovla.pr_summary import pr_summary

# The stage: params train.lr -> retrieval metrics, a recall curve and the train metrics' checkpoint key.
STAGE = """
import json, pathlib, yaml
lr = yaml.safe_load(open("params.yaml"))["train"]["lr"]
m = pathlib.Path("metrics"); m.mkdir(exist_ok=True)
r1 = round(lr * 100, 1)
json.dump({"t2v": {"R@1": r1, "R@5": r1 + 30, "MdR": round(8 - lr * 10, 1)},
           "v2t": {"R@1": 15.0, "R@5": 40.0, "MdR": 6.0},
           "twins": {"content": 50.0, "order": 50 + lr * 10}}, open(m / "retrieval.json", "w"))
json.dump({"checkpoint_key": f"key-{lr}", "epochs": 2}, open(m / "train.json", "w"))
rows = "".join(f"{k},{min(100, r1 * k)}\\n" for k in (1, 2, 5))
open(m / "recall_at_k.csv", "w").write("k,discovla_t2v\\n" + rows)
"""


@pytest.fixture(autouse=True, scope="module")
def _no_analytics() -> Iterator[None]:
    """No DVC usage reports from the test repositories (`dvc plots diff` runs DVC's command line)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DVC_NO_ANALYTICS", "1")
        yield


def _ablation(lora_r1: float) -> dict:
    def cell(v: float) -> dict:
        return {"mean": v, "std": 1.0, "n": 3}

    return {
        "seeds": [1, 2, 3],
        "summary": {
            "lora": {"t2v_R@1": cell(lora_r1), "v2t_R@1": cell(16.0)},
            "full": {"t2v_R@1": cell(10.6), "v2t_R@1": cell(14.7)},
        },
    }


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def _commit(root: Path, lr: float, lora_r1: float, message: str, static_r1: float | None = None) -> None:
    from dvc.repo import Repo

    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": lr, "epochs": 2}}))
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "ablation.json").write_text(json.dumps(_ablation(lora_r1)))
    if static_r1 is not None:  # the static-caption ablation, new in the PR
        (root / "metrics" / "ablation_static.json").write_text(json.dumps(_ablation(static_r1)))
    with contextlib.chdir(root), Repo(".") as repo:  # DVC resolves dvc.yaml against the working directory
        repo.reproduce()
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", message)


@pytest.fixture(scope="module")
def prrepo(tmp_path_factory: pytest.TempPathFactory, _no_analytics: None) -> Path:
    """main: lr 0.1; branch pr (checked out): lr 0.2, a changed LoRA row of the ablation and a new
    static-caption ablation."""
    from dvc.repo import Repo

    root = tmp_path_factory.mktemp("prrepo")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.email", "ci@example.com")
    _git(root, "config", "user.name", "ci")
    with contextlib.chdir(root):
        Repo.init(".").close()
    (root / "stage.py").write_text(STAGE)
    dvc = {
        "plots": [{"recall_at_k": {"x": "k", "y": {"metrics/recall_at_k.csv": ["discovla_t2v"]}}}],
        "stages": {
            "train": {
                "cmd": f"{sys.executable} stage.py",
                "deps": ["stage.py"],
                "params": ["train"],
                "metrics": [
                    {"metrics/retrieval.json": {"cache": False}},
                    {"metrics/train.json": {"cache": False}},
                ],
                "plots": [{"metrics/recall_at_k.csv": {"cache": False}}],
            }
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    _commit(root, 0.1, 13.0, "base")
    _git(root, "checkout", "-qb", "pr")
    _commit(root, 0.2, 14.2, "a change", static_r1=9.5)
    return root


def test_comment_tables_hold_old_new_and_delta(prrepo: Path, tmp_path: Path) -> None:
    text = pr_summary(prrepo, "main", images_dir=tmp_path / "plots", link_base=tmp_path)
    print(text)
    assert text.startswith("## DiscoVLA: `workspace` vs `main`\n")
    for row in (
        "| t2v R@1 | 10 | 20 | +10 |",
        "| t2v R@5 | 40 | 50 | +10 |",
        "| t2v MdR (lower is better) | 7 | 6 | -1 |",
        "| order-twin acc | 51 | 52 | +1 |",
        "| `train.lr` | 0.1 | 0.2 |",
        "| LoRA only | 13 → 14.2 (+1.2) |",
        "Ablation rows that changed (`metrics/ablation_static.json`, mean over seeds, main → workspace):",
        "| LoRA only | – → 9.5 | – → 16 |",
        "| `metrics/train.json` | `checkpoint_key` | `key-0.1` | `key-0.2` | – |",
    ):
        assert row in text, row
    # unchanged metrics, params and ablation rows are not listed
    for absent in ("\n| v2t R@1 |", "content-twin acc", "train.epochs"):
        assert absent not in text, absent
    ablation = text.split("`metrics/ablation.json`", 1)[1].split("`metrics/ablation_static.json`", 1)[0]
    assert "Full DiscoVLA" not in ablation  # its row did not change
    # the changed plot, drawn once (the stage's own entry for the same file is the named plot's data)
    assert "![recall_at_k](plots/recall_at_k.png)" in text
    assert (tmp_path / "plots" / "recall_at_k.png").stat().st_size > 1000
    assert "metrics/recall_at_k.csv**" not in text
    assert "**Fresh run**: `dvc status` is clean" in text and "`key-0.2`" in text
    assert "Its metrics equal those committed in" in text


def test_no_change_is_one_line(prrepo: Path) -> None:
    text = pr_summary(prrepo, "pr")
    assert len(text.strip().splitlines()) == 1
    assert text.startswith(f"**DiscoVLA** `workspace` vs `pr`: {NO_CHANGE}")
    assert "|" not in text


def test_two_commits_and_a_stale_workspace(prrepo: Path, tmp_path: Path) -> None:
    text = pr_summary(prrepo, "main", "pr")
    assert "| t2v R@1 | 10 | 20 | +10 |" in text
    assert "Freshness not checked: `pr` is a commit" in text
    stale = tmp_path / "stale"
    shutil.copytree(prrepo, stale)
    (stale / "params.yaml").write_text(yaml.safe_dump({"train": {"lr": 0.3, "epochs": 2}}))
    text = pr_summary(stale, "main")
    assert "**Not a fresh run**: `dvc status` lists `train` as changed" in text
    assert "uncommitted changes to code or params" in text
    assert "| `train.lr` | 0.1 | 0.3 |" in text


def test_command_writes_the_comment_and_its_images(prrepo: Path, tmp_path: Path) -> None:
    out = tmp_path / "comment" / "pr.md"
    res = CliRunner().invoke(app, ["pr-summary", "--base", "main", "--repo", str(prrepo), "--out", str(out)])
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    assert "![recall_at_k](pr-plots/recall_at_k.png)" in out.read_text()
    assert (out.parent / "pr-plots" / "recall_at_k.png").is_file()
    res = CliRunner().invoke(app, ["pr-summary", "--base", "no-such-branch", "--repo", str(prrepo)])
    assert res.exit_code == 2 and res.stderr.startswith("error: "), (res.stdout, res.stderr)
    assert len(res.stderr.strip().splitlines()) == 1


def test_plots_with_equal_data_are_not_changed() -> None:
    def render(rows: list[dict]) -> dict:
        return {
            "revisions": ["a", "b"],
            "content": {"data": {"values": rows}, "encoding": {"x": {"field": "k"}}},
        }

    same = [{"k": "1", "y": "2", "rev": r} for r in ("a", "b")]
    moved = [{"k": "1", "y": "2", "rev": "a"}, {"k": "1", "y": "3", "rev": "b"}]
    plots = {"data": {"same": [render(same)], "moved": [render(moved)], "skipped": [render(moved)]}}
    assert [p.name for p in changed_plots(plots, skip={"skipped"})] == ["moved"]
