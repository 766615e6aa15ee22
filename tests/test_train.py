"""Training loop: resume equals uninterrupted, only adapters change, schedule, adapters round-trip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_config

import discovla.provenance
from discovla.artifacts.adapters import load_adapters, save_adapters
from discovla.train import epoch_plan, train

CFG = tiny_train_config()


@pytest.mark.parametrize("augment", ["none", "randaugment"])
def test_killed_and_resumed_run_ends_with_the_same_adapters(
    features, tiny_clip_factory, tmp_path: Path, augment: str
) -> None:
    cfg = replace(CFG, augment=augment)
    full, rec_full = train(tiny_clip_factory(), features, cfg, tmp_path / "a", progress=False)
    # "crash" after epoch 1, then rerun the same command: it resumes from the epoch-1 checkpoint
    train(tiny_clip_factory(), features, cfg, tmp_path / "b", stop_after_epoch=1, progress=False)
    resumed, rec_resumed = train(tiny_clip_factory(), features, cfg, tmp_path / "b", progress=False)
    assert rec_resumed["resumed_from_epoch"] == 1 and rec_full["resumed_from_epoch"] == 0
    a, b = full.adapter_state_dict(), resumed.adapter_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [e["loss"] for e in rec_full["epochs"]] == [e["loss"] for e in rec_resumed["epochs"]]
    # and the adapters really moved away from their initialisation
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)


def test_frozen_weights_do_not_change(features, tiny_clip_factory, tmp_path: Path) -> None:
    clip = tiny_clip_factory()
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    model, _ = train(clip, features, replace(CFG, epochs=1), tmp_path, progress=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora" in n or "fusion" in n) for n in trainable), trainable
    after = clip.state_dict()
    for k, v in before.items():
        if "lora" not in k:
            assert torch.equal(v, after[k]), k


def test_adapters_round_trip_through_safetensors(features, tiny_clip_factory, tmp_path: Path) -> None:
    model, _ = train(tiny_clip_factory(), features, replace(CFG, epochs=1), tmp_path / "ck", progress=False)
    save_adapters(tmp_path / "out", model, {"note": "test"})
    assert (tmp_path / "out/adapters.safetensors").exists() and (tmp_path / "out/config.json").exists()
    loaded = load_adapters(tmp_path / "out", tiny_clip_factory())
    pix = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_frames(pix), loaded.encode_frames(pix), atol=1e-6)


def _finished_runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/epoch-*/state.json"))


def test_resume_only_with_the_same_data(features, tiny_clip_factory, tmp_path: Path) -> None:
    cfg = replace(CFG, epochs=1)
    _, first = train(tiny_clip_factory(), features, cfg, tmp_path, progress=False)
    _, again = train(tiny_clip_factory(), features, cfg, tmp_path, progress=False)
    assert again["checkpoint_key"] == first["checkpoint_key"] and again["resumed_from_epoch"] == 1
    features.pixels[3, 1, 0, 5, 5] ^= 1  # one changed byte of training input
    _, changed = train(tiny_clip_factory(), features, cfg, tmp_path, progress=False)
    assert changed["checkpoint_key"] != first["checkpoint_key"]
    assert changed["resumed_from_epoch"] == 0 and len(changed["curve"]) > 0  # trained afresh
    assert len({p.parent for p in _finished_runs(tmp_path)}) == 2


def test_resume_only_with_the_same_code(features, tiny_clip_factory, tmp_path: Path, monkeypatch) -> None:
    import shutil

    cfg = replace(CFG, epochs=1)
    _, first = train(tiny_clip_factory(), features, cfg, tmp_path / "ck", progress=False)
    code = tmp_path / "discovla"
    shutil.copytree(discovla.provenance.ROOT, code, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(discovla.provenance, "ROOT", code)
    _, same = train(tiny_clip_factory(), features, cfg, tmp_path / "ck", progress=False)
    assert same["checkpoint_key"] == first["checkpoint_key"]  # identical source, another place
    (code / "model" / "fusion.py").write_text((code / "model" / "fusion.py").read_text() + "\n# edited\n")
    _, edited = train(tiny_clip_factory(), features, cfg, tmp_path / "ck", progress=False)
    assert edited["checkpoint_key"] != first["checkpoint_key"] and edited["resumed_from_epoch"] == 0


def test_resume_only_with_the_same_frozen_weights(features, tiny_clip_factory, tmp_path: Path) -> None:
    cfg = replace(CFG, epochs=1)
    _, first = train(tiny_clip_factory(), features, cfg, tmp_path, progress=False)
    clip = tiny_clip_factory()
    with torch.no_grad():
        clip.visual.conv1.weight[0, 0, 0, 0] += 1e-3
    _, other = train(clip, features, cfg, tmp_path, progress=False)
    assert other["checkpoint_key"] != first["checkpoint_key"] and other["resumed_from_epoch"] == 0


def test_pairs_epoch_visits_every_caption_once(features) -> None:
    vids = features.split_videos("train")
    order, chosen = epoch_plan(features, vids, 7, 0, "pairs")
    train_rows = np.flatnonzero(features.captions.split.to_numpy() == "train")
    assert sorted(chosen) == sorted(train_rows)  # every (video, caption) pair exactly once
    assert (features.captions.video_index.to_numpy()[chosen] == order).all()
    again, _ = epoch_plan(features, vids, 7, 0, "pairs")
    other, _ = epoch_plan(features, vids, 7, 1, "pairs")
    assert (order == again).all() and not (order == other).all()


def test_sampling_sets_the_steps_per_epoch(features, tiny_clip_factory, tmp_path: Path) -> None:
    steps = {}
    for sampling in ("pairs", "videos"):
        cfg = replace(CFG, epochs=1, sampling=sampling)
        _, rec = train(tiny_clip_factory(), features, cfg, tmp_path, progress=False)
        steps[sampling] = len(rec["curve"])
    # 16 train videos with 2 captions each, batch 8: 32 pairs -> 4 steps, 16 videos -> 2 steps
    assert steps == {"pairs": 4, "videos": 2}


def test_epoch_plan_is_a_function_of_seed_and_epoch(features) -> None:
    vids = features.split_videos("train")
    o1, c1 = epoch_plan(features, vids, 1, 0, "videos")
    o2, c2 = epoch_plan(features, vids, 1, 0, "videos")
    o3, _ = epoch_plan(features, vids, 1, 1, "videos")
    assert (o1 == o2).all() and (c1 == c2).all() and not (o1 == o3).all()
    assert sorted(o1) == sorted(vids)
    # the chosen caption always belongs to the video
    assert (features.captions.video_index.to_numpy()[c1] == o1).all()


def test_torchrun_two_ranks_match_one_process(tmp_path: Path) -> None:
    """Global batch split over 2 CPU ranks (gloo, all-gather with gradient) == the same batch on 1 process."""
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = Path(__file__).parent / "helpers" / "ddp_train.py"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, capture_output=True)
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    with socket.socket() as s:  # a free port, so parallel or repeated runs do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
    two = subprocess.run([*torchrun, str(script), str(tmp_path / "two")], env=env, capture_output=True)
    assert two.returncode == 0, two.stderr.decode()[-3000:]
    a = load_file(str(tmp_path / "one/adapters/adapters.safetensors"))
    b = load_file(str(tmp_path / "two/adapters/adapters.safetensors"))
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5, rtol=1e-4), (k, (a[k] - b[k]).abs().max())
        moved += int(a[k].abs().sum() > 0)
    assert moved > 0
