"""The ``ray`` engine of the frames, captions and index stages (params ``engine``): the same outputs as the
local engine (byte for byte), resume after a kill, the engine params and the stage wiring. One small local Ray
for the whole session (two CPUs, no dashboard), shut down at the end."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch
import yaml
from conftest import synthetic_features
from helpers.search import train_adapters, write_features
from helpers.stages import stage_command
from test_captions_stage import _still, world  # noqa: F401  (the fake shapes world fixture)
from test_frames_store import SIZE, F, make_dataset

import discovla.captioning as captioning
from discovla.artifacts.captions import write_captions
from discovla.artifacts.index import read_index
from discovla.captioning import make_captions
from discovla.config import ParamsError, load_params, params_from_dict
from discovla.data.registry import load_dataset
from discovla.engines import EngineParams
from discovla.extraction import extract_frames
from discovla.images import encode_png
from discovla.split_indexing import build_split_index
from discovla.tiny_blip import TinyBlipSpec, pretrain_tiny_captioner

RAY = EngineParams(frames="ray", captions="ray", index="ray", part_frames=5)
TIMING = {"seconds", "videos_per_s", "frames_per_s", "captions_per_s"}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray for the session; yields its address (for drivers in subprocesses)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _same_dir(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert all(filecmp.cmp(a / n, b / n, shallow=False) for n in names), names


def _untimed(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in TIMING}


# ------------------------------------------------------------------------------------------ params


def test_engine_params() -> None:
    assert params_from_dict({}).engine == EngineParams()  # no section: every stage local
    assert not EngineParams().uses_ray() and RAY.uses_ray()
    p = params_from_dict({"engine": {"captions": "ray", "actors": 4, "num_gpus": 1}}).engine
    assert (p.frames, p.captions, p.actors, p.num_gpus) == ("local", "ray", 4, 1.0)
    with pytest.raises(ParamsError, match=r"^engine\.frames: expected one of local, ray, got 'spark'$"):
        params_from_dict({"engine": {"frames": "spark"}})
    with pytest.raises(ParamsError, match=r"^engine\.workers: unknown key \(allowed: frames, captions"):
        params_from_dict({"engine": {"workers": 2}})


def test_the_repository_params_keep_every_stage_local() -> None:
    repo = Path(__file__).resolve().parents[1]
    assert load_params(repo / "params.yaml").engine == EngineParams()


def test_a_bad_engine_param_stops_the_stage_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("data:\n  dataset: shapes\nengine:\n  frames: spark\n")
    r = subprocess.run(stage_command("frames"), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: params.yaml: engine.frames: expected one of local, ray")


# ------------------------------------------------------------------------------------------ frames


def test_frames_ray_writes_the_local_store(ray_cluster: str, tmp_path: Path) -> None:
    videos = load_dataset("folder", make_dataset(tmp_path / "ds")).videos  # good and broken videos
    kw = {"batch_videos": 3, "shard_rows": 5}  # several shards, written by Ray tasks in parallel
    local = extract_frames(videos, tmp_path / "local", F, SIZE, work_dir=tmp_path / "wl", **kw)
    on_ray = extract_frames(videos, tmp_path / "ray", F, SIZE, work_dir=tmp_path / "wr", engine=RAY, **kw)
    assert local["shards"] > 2
    _same_dir(tmp_path / "local", tmp_path / "ray")  # shards, videos.csv, skipped.csv: byte-identical
    assert _untimed(on_ray) == _untimed(local) and on_ray["skipped"] == 4
    assert not (tmp_path / "wr").exists()  # parts removed after success


def test_frames_ray_resumes_after_a_kill(ray_cluster: str, tmp_path: Path) -> None:
    """A driver killed mid-run (SIGKILL) leaves whole parts and no store; the rerun samples only the
    missing parts and writes the local engine's store."""
    base = load_dataset("folder", make_dataset(tmp_path / "ds", bad=False)).videos
    videos = pd.concat([base.assign(video_id=base.video_id + f"_{i}") for i in range(8)], ignore_index=True)
    videos.to_csv(tmp_path / "videos.csv", index=False)
    out, work = tmp_path / "ray", tmp_path / "work"
    code = (
        "import pandas as pd\n"
        "from discovla.engines import EngineParams\n"
        "from discovla.extraction import extract_frames\n"
        f"v = pd.read_csv({str(tmp_path / 'videos.csv')!r}, dtype=str)\n"
        f"extract_frames(v, {str(out)!r}, {F}, {SIZE}, work_dir={str(work)!r}, batch_videos=1, "
        f"progress=False, engine=EngineParams(frames='ray', address={ray_cluster!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while proc.poll() is None and len(list(work.glob("*/part-*.parquet"))) < 3:
        assert time.monotonic() < deadline, "no part written in time"
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read() if proc.stderr else ''}"
    proc.kill()
    proc.wait(timeout=60)
    assert not out.exists()  # nothing that looks complete
    kept = len(list(work.glob("*/part-*.parquet")))
    assert 3 <= kept < len(videos)
    stats = extract_frames(videos, out, F, SIZE, work_dir=work, batch_videos=1, progress=False, engine=RAY)
    assert stats["resumed"] >= kept and stats["done"] == len(videos)
    extract_frames(videos, tmp_path / "local", F, SIZE, work_dir=tmp_path / "wl", batch_videos=1)
    _same_dir(tmp_path / "local", out)


def test_frames_stage_on_a_ray_cluster(ray_cluster: str, tmp_path: Path) -> None:
    """The stage script with ``engine.frames: ray`` and RAY_ADDRESS: the local engine's summary and store."""
    root = make_dataset(tmp_path / "ds")
    params = {"data": {"dataset": "folder", "root": str(root)}, "frames": {"num_frames": F, "size": SIZE}}
    runs = {}
    for name, engine in (("local", "local"), ("ray", "ray")):
        cwd = tmp_path / name
        cwd.mkdir()
        (cwd / "params.yaml").write_text(yaml.safe_dump({**params, "engine": {"frames": engine}}))
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": ray_cluster}
        runs[name] = subprocess.run(
            stage_command("frames"), cwd=cwd, capture_output=True, text=True, env=env, timeout=300
        )
        assert runs[name].returncode == 0, runs[name].stderr
    last = [runs[n].stdout.strip().splitlines()[-1] for n in runs]
    assert all(line.startswith("frames: 4/8 videos sampled, 4 skipped") for line in last), last
    assert "8/8" in runs["ray"].stderr  # the progress bar counted every video
    _same_dir(tmp_path / "local/data/frames", tmp_path / "ray/data/frames")
    metrics = [json.loads((tmp_path / n / "metrics/frames.json").read_text()) for n in runs]
    assert _untimed(metrics[0]) == _untimed(metrics[1])


# ------------------------------------------------------------------------------------------ captions


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("blip") / "blip"
    stills = [_still(7, i, 64) for i in range(16)]
    spec = TinyBlipSpec(
        patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, heads=2, mlp_ratio=2
    )
    images = [encode_png(img) for img, _ in stills]
    pretrain_tiny_captioner(
        images, [c for _, c in stills], out, epochs=1, batch_size=4, spec=spec, device="cpu"
    )
    return out


def test_captions_ray_writes_the_local_table_and_resumes(
    ray_cluster: str,
    world: Path,  # noqa: F811
    tiny_blip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = {"batch_size": 3, "max_new_tokens": 6, "root": world / "data/shapes"}
    frames = world / "data/frames"  # two shards (7 + 5 rows): parts never cross a shard
    local, m_local = make_captions(str(tiny_blip), frames, **args)
    work = tmp_path / "work"
    on_ray, m_ray = make_captions(str(tiny_blip), frames, **args, engine=RAY, work_dir=work)
    write_captions(tmp_path / "local.parquet", local)
    write_captions(tmp_path / "ray.parquet", on_ray)
    assert filecmp.cmp(tmp_path / "local.parquet", tmp_path / "ray.parquet", shallow=False)
    assert _untimed(m_ray) == _untimed(m_local) and not work.exists()

    # resume: keep the parts of a run, drop some, mark one kept part; the rerun recomputes only the dropped
    monkeypatch.setattr(captioning.shutil, "rmtree", lambda *a, **k: None)
    make_captions(str(tiny_blip), frames, **args, engine=RAY, work_dir=work)
    monkeypatch.undo()
    parts = sorted(work.glob("*/part-*.parquet"))
    assert len(parts) == 3  # batches of 3 rows, at most 5 rows a part: [3] [3, 1] | [3, 2]
    parts[1].unlink()
    parts[2].unlink()
    table = pq.read_table(parts[0])
    pq.write_table(table.set_column(2, "caption", pa.array(["kept"] * table.num_rows)), parts[0])
    again, _ = make_captions(str(tiny_blip), frames, **args, engine=RAY, work_dir=work)
    n = table.num_rows
    assert again.caption.iloc[:n].eq("kept").all()
    pd.testing.assert_frame_equal(
        again.iloc[n:].reset_index(drop=True), local.iloc[n:].reset_index(drop=True)
    )
    assert not work.exists()


# ------------------------------------------------------------------------------------------ index


def test_index_ray_writes_the_local_index(ray_cluster: str, tmp_path: Path, monkeypatch) -> None:
    """Same index, meta included, from relative paths as the stage passes them (the actors see absolute
    ones); the driver loads no model (the actors, in their own processes, do)."""
    from discovla.retriever import Retriever

    features = synthetic_features(n_train=16, n_test=10, frames=4, size=32)
    train_adapters(tmp_path, features)
    write_features(features, tmp_path / "features")
    monkeypatch.chdir(tmp_path)
    adapters, cache = Path("models/discovla"), Path("features")
    config = json.loads((adapters / "config.json").read_text())  # the base weights as a relative path
    config["pretrained"] = str(Path(config["pretrained"]).relative_to(tmp_path))
    (adapters / "config.json").write_text(json.dumps(config))
    local = build_split_index(cache, adapters, "test", tmp_path / "local", batch_size=8, device="cpu")
    assert local.meta["model"]["adapters"] == "models/discovla" and local.meta["pretrained"].startswith(
        "clip/"
    )

    def no_model_here(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the driver loaded the model")

    monkeypatch.setattr(Retriever, "load", no_model_here)
    on_ray = build_split_index(
        cache,
        adapters,
        "test",
        tmp_path / "ray",
        batch_size=8,
        device="cpu",
        engine=RAY,
        work_dir=tmp_path / "w",
    )
    assert on_ray.video_ids == local.video_ids and len(on_ray) == 10
    assert torch.equal(on_ray.embeddings, local.embeddings)
    _same_dir(tmp_path / "local", tmp_path / "ray")
    assert read_index(tmp_path / "ray").meta == read_index(tmp_path / "local").meta
    assert not (tmp_path / "w").exists()


def test_captions_stage_on_a_ray_cluster(
    ray_cluster: str,
    world: Path,  # noqa: F811
    tiny_blip: Path,
    tmp_path: Path,
) -> None:
    """The stage script with ``engine.captions: ray``: the local engine's table; a missing model: one line."""
    tables = {}
    for engine in ("local", "ray", "missing"):
        cwd = tmp_path / engine
        (cwd / "data").mkdir(parents=True)
        (cwd / "data/frames").symlink_to(world / "data/frames")
        model = tmp_path / "none" if engine == "missing" else tiny_blip
        params = {
            "data": {"dataset": "shapes", "root": str(world / "data/shapes")},
            "captioner": {"model": str(model), "batch_size": 3, "max_new_tokens": 6},
        }
        params["engine"] = {"captions": "local" if engine == "local" else "ray", "part_frames": 5}
        (cwd / "params.yaml").write_text(yaml.safe_dump(params))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": ray_cluster}
        res = subprocess.run(stage_command("captions"), cwd=cwd, capture_output=True, text=True, env=env)
        if engine == "missing":
            assert res.returncode == 2 and res.stderr.startswith("error: captioner.model:"), res.stderr
            assert res.stderr.strip().count("\n") == 0
            continue
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1].startswith("captions: 12 frames of 3 videos")
        tables[engine] = cwd / "data/captions.parquet"
        assert not (cwd / ".work/captions").exists()
    assert filecmp.cmp(tables["local"], tables["ray"], shallow=False)


def test_stale_part_folders_of_other_inputs_are_removed(tmp_path: Path, capsys) -> None:
    from discovla.split_indexing import _remove_stale_parts

    work = tmp_path / "work"
    old, fresh, keep = (work / name for name in ("a" * 16, "b" * 16, "c" * 16))
    for d in (old, fresh, keep):
        d.mkdir(parents=True)
        (d / "part-00000.npy").write_bytes(b"x" * 2048)
    (work / "notes").mkdir()  # not a part folder: never touched
    hours_ago = time.time() - 2 * 3600
    for path in (old / "part-00000.npy", old, work / "notes"):
        os.utime(path, (hours_ago, hours_ago))
    _remove_stale_parts(keep)
    assert sorted(p.name for p in work.iterdir()) == ["b" * 16, "c" * 16, "notes"]
    assert "removed 1 stale part folder(s)" in capsys.readouterr().out
