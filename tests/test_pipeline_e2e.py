"""The whole DVC pipeline (`dvc repro`) on a tiny shapes world, in a temporary copy of the repository.

Catches a broken dvc.yaml, a stage that only works on the full data, and missing deps/outs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from discovla.artifacts.metrics import RUN_KEYS
from tests.helpers.benchmarks import WRITERS, ffmpeg_clip

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = {
    "shapes": {
        "train_videos": 24,
        "val_videos": 8,
        "test_videos": 12,
        "train_captions": 2,
        "stills_train": 96,
        "stills_val": 32,
    },
    "frames": {"num_frames": 4, "workers": 2},
    "pretrain_clip": {"epochs": 30, "batch_size": 32},  # ~6 s: a CLIP good enough that training can help
    "pretrain_captioner": {"epochs": 1, "batch_size": 32},
    "captioner": {"max_new_tokens": 8, "batch_size": 32},
    "features": {"batch_size": 64},
    "train": {"epochs": 6, "batch_size": 8},
    "evaluate": {"batch_size": 32, "chunk_size": 5},
}


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / f.decode()
        if src.is_file():
            (dst / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f.decode())


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(_merge(params, TINY), sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    _run(["git", "init", "-q"], repo, env)
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "copy"], repo, env)

    _run([str(BIN / "dvc"), "repro"], repo, env)

    metrics = repo / "metrics"
    shapes = json.loads((metrics / "info" / "shapes.json").read_text())
    frames = json.loads((metrics / "frames.json").read_text())
    assert frames["done"] == 24 + 8 + 12 and frames["skipped"] == 0
    assert shapes["splits"]["test"]["videos"] == 12
    retrieval = json.loads((metrics / "retrieval.json").read_text())
    zs = json.loads((metrics / "zeroshot.json").read_text())
    for m in (retrieval, zs):
        assert m["t2v"]["queries"] == 12
    # the run learns: training lowers its loss, and the trained model ranks the test videos better than the
    # frozen CLIP it started from (mean rank over all 12 queries, and no worse at R@1)
    train = json.loads((metrics / "train.json").read_text())
    assert train["epochs"] == 6 and train["trainable_parameters"] > 0
    assert train["per_epoch"][-1]["loss"] < train["per_epoch"][0]["loss"]
    assert retrieval["t2v"]["MnR"] < zs["t2v"]["MnR"] and retrieval["t2v"]["R@1"] >= zs["t2v"]["R@1"]
    assert (repo / "models/discovla/adapters.safetensors").exists()
    assert (repo / "data/captions.parquet").exists()

    # DVC metrics hold no run-dependent values (timings, speeds, device): those are in metrics/info/
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    files = [
        next(iter(m)) if isinstance(m, dict) else m
        for s in dvc["stages"].values()
        for m in s.get("metrics", [])
    ]
    for f in files:
        text = (repo / f).read_text()
        assert not [k for k in RUN_KEYS if f'"{k}"' in text], f
    assert (metrics / "info" / "train.json").exists()

    # the report page and the search over the test split's index, as a user runs them
    page = (repo / "reports" / "index.html").read_text()
    assert (
        "Retrieval metrics" in page
        and "data:image/png;base64," in page
        and "http" not in page.split("<body", 1)[1]
    )
    found = _run([str(BIN / "discovla"), "search", "a red circle", "--k", "3"], repo, env).stdout
    rows = [ln for ln in found.splitlines() if ln.strip()[:1].isdigit()]
    assert len(rows) == 3 and all("videos/test" in ln for ln in rows), found

    status = _run([str(BIN / "dvc"), "status"], repo, env).stdout
    assert "up to date" in status, status
    # changing a training param re-runs train and evaluate only
    # a sweep point: changing a training param re-runs train and evaluate only, and lands in `dvc exp show`
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "baseline"], repo, env)
    out = _run([str(BIN / "dvc"), "exp", "run", "-S", "fusion.alpha=0.0", "-n", "alpha0"], repo, env).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "evaluate", "index", "report"}, out
    # a frames param re-runs frames and everything after it, but not shapes or the pretraining stages
    exp = [str(BIN / "dvc"), "exp", "run", "-S", "frames.num_frames=3", "-n", "frames3"]
    out = _run(exp, repo, env).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"frames", "captions", "features", "train", "evaluate", "index", "report"}, out
    table = _run([str(BIN / "dvc"), "exp", "show", "--md"], repo, env).stdout
    assert "alpha0" in table and "frames3" in table and "t2v.R@1" in table, table

    # the four benchmark readers, each on a tiny copy in its released format with real clips, through the
    # pipeline as a user runs it: `dvc exp run -S data.dataset=X -S data.root=...`
    for name, write in WRITERS.items():
        want = write(repo / "data" / name, ffmpeg_clip)
        sets = {"data.dataset": name, "data.root": f"data/{name}", "train.batch_size": 2, "train.epochs": 1}
        cmd = [str(BIN / "dvc"), "exp", "run", "-n", name, *(f"-S{k}={v}" for k, v in sets.items())]
        out = _run(cmd, repo, env).stdout
        assert "annotation row(s)" in out, out  # every fixture has odd rows: the frames stage says so
        frames = json.loads((metrics / "frames.json").read_text())
        test_videos = want["videos"]["test"] - 1  # one test video is missing on purpose
        assert frames["done"] == sum(want["videos"].values()) - 1 and frames["skipped"] == 1, (name, frames)
        assert frames["annotation_rows_skipped"] > 0
        retrieval = json.loads((metrics / "retrieval.json").read_text())
        assert retrieval["v2t"]["queries"] == test_videos, (name, retrieval)
        per_video = want.get("captions", {}).get("test", want["videos"]["test"]) // want["videos"]["test"]
        assert retrieval["t2v"]["queries"] == test_videos * per_video, (name, retrieval)
