"""Training loop: resume equals uninterrupted, only adapters change, schedule, adapters round-trip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from discovla.model import DiscoVLAConfig
from discovla.train import TrainConfig, epoch_plan, load_adapters, lr_at, save_adapters, train

CFG = TrainConfig(
    seed=3,
    epochs=2,
    batch_size=8,
    lr=1e-3,
    warmup=0.25,
    device="cpu",
    model=DiscoVLAConfig(
        lora_rank=4, fusion=True, vision_layers=2, text_layers=1, adapter_dim=4, num_frames=4
    ),
)


def test_killed_and_resumed_run_ends_with_the_same_adapters(
    features, tiny_clip_factory, tmp_path: Path
) -> None:
    full, rec_full = train(tiny_clip_factory(), features, CFG, tmp_path / "a", progress=False)
    # "crash" after epoch 1, then rerun the same command: it resumes from the epoch-1 checkpoint
    train(tiny_clip_factory(), features, CFG, tmp_path / "b", stop_after_epoch=1, progress=False)
    resumed, rec_resumed = train(tiny_clip_factory(), features, CFG, tmp_path / "b", progress=False)
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


def test_schedule_warms_up_then_decays() -> None:
    cfg = replace(CFG, lr=1.0, warmup=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))
    assert lrs[-1] < 0.01


def test_epoch_plan_is_a_function_of_seed_and_epoch(features) -> None:
    vids = features.split_videos("train")
    o1, c1 = epoch_plan(features, vids, 1, 0)
    o2, c2 = epoch_plan(features, vids, 1, 0)
    o3, _ = epoch_plan(features, vids, 1, 1)
    assert (o1 == o2).all() and (c1 == c2).all() and not (o1 == o3).all()
    assert sorted(o1) == sorted(vids)
    # the chosen caption always belongs to the video
    assert (features.captions.video_index.to_numpy()[c1] == o1).all()


def test_torchrun_two_ranks_match_one_process(tmp_path: Path) -> None:
    """Global batch split over 2 CPU ranks (gloo, all-gather with gradient) == the same batch on 1 process."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    script = Path(__file__).parent / "helpers" / "ddp_train.py"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, capture_output=True)
    assert one.returncode == 0, one.stderr.decode()[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--master_port", "29533"]
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
