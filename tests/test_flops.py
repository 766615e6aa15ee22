"""Analytic step FLOPs (discovla/flops.py) against torch's FlopCounterMode on real training steps."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from discovla.flops import mfu, peak_bf16_flops, step_flops, text_length
from discovla.losses import discovla_loss
from discovla.model import DiscoVLA, DiscoVLAConfig

# different widths per tower and an MLP ratio of 3, so a swapped dimension shows
SPEC = dict(
    embed_dim=24,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=3, head_width=16, mlp_ratio=3.0),
    text_cfg=dict(context_length=16, vocab_size=100, width=48, heads=4, layers=3),
)
B, F = 3, 2


def tokens(n: int, seed: int, length: int = 16, vocab: int = 100) -> torch.Tensor:
    """SOT, words, EOT (largest id), padding; the EOT never in the last columns, so trimming matters."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(n, length, dtype=torch.long)
    for r in range(n):
        eot = int(torch.randint(2, length - 4, (1,), generator=g))
        t[r, 0], t[r, eot] = vocab - 2, vocab - 1
        t[r, 1:eot] = torch.randint(1, vocab - 2, (eot - 1,), generator=g)
    return t


def counted_step(model: DiscoVLA, pseudo: bool) -> tuple[int, int, dict]:
    """FlopCounterMode's (forward, backward) FLOPs of one training step, and the analytic count."""
    torch.manual_seed(0)
    px, caps = torch.randn(B, F, 3, 32, 32), tokens(B, seed=1)
    pseudo_tokens = tokens(B * F, seed=2).view(B, F, -1) if pseudo else None
    w = 0.3 if pseudo else 0.0
    with sdpa_kernel(SDPBackend.MATH):  # the CPU flash kernel is not in FlopCounterMode's registry
        with FlopCounterMode(display=False) as fwd:
            p = model.encode_pseudo(pseudo_tokens) if pseudo else None
            loss = discovla_loss(model.encode_text(caps), model.encode_frames(px), p, model.logit_scale, w, w)
        with FlopCounterMode(display=False) as bwd:
            loss["loss"].backward()
    pseudo_len = text_length(model, pseudo_tokens) if pseudo else None
    want = step_flops(model, B, F, text_length(model, caps), pseudo_len, model.activation_checkpointing)
    return fwd.get_total_flops(), bwd.get_total_flops(), want


@pytest.mark.parametrize(
    "fusion,rank,temporal", [(False, 4, False), (True, 4, False), (True, 4, True), (True, 0, False)]
)
def test_analytic_flops_equal_flop_counter(fusion, rank, temporal):
    cfg = DiscoVLAConfig(
        lora_rank=rank,
        fusion=fusion,
        vision_layers=2,
        text_layers=1,
        adapter_dim=4,
        num_frames=F,
        temporal_position=temporal,
    )
    model = DiscoVLA(open_clip.CLIP(**copy.deepcopy(SPEC)), cfg).train()
    fwd, bwd, want = counted_step(model, pseudo=fusion)
    assert want["recompute"] == 0 and want["hardware_flops"] == want["model_flops"]
    assert (fwd, bwd) == (want["forward"], want["backward"])
    assert want["model_flops"] == fwd + bwd

    model.set_activation_checkpointing(True)
    fwd_ck, bwd_ck, want_ck = counted_step(model, pseudo=fusion)
    assert fwd_ck == fwd  # checkpointing adds no forward work ...
    # ... it reruns the blocks in backward (with lora_rank 0, only the fused blocks and those after them)
    assert want_ck["recompute"] > (0.4 if rank else 0.05) * want_ck["forward"]
    assert bwd_ck - bwd == want_ck["recompute"]
    assert want_ck["model_flops"] == want["model_flops"]
    assert want_ck["hardware_flops"] == fwd_ck + bwd_ck
    assert want_ck["towers"].keys() == (
        {"vision", "text", "pseudo", "loss"} if fusion else {"vision", "text", "loss"}
    )


def test_text_length_is_the_trimmed_length():
    model = DiscoVLA(open_clip.CLIP(**copy.deepcopy(SPEC)), DiscoVLAConfig(fusion=False))
    caps = tokens(5, seed=3)
    assert text_length(model, caps) == int(caps.argmax(dim=-1).max()) + 1 < 16
    assert text_length(model, caps.view(5, 1, 16)) == text_length(model, caps)


def test_vit_b16_image_forward_matches_the_published_count():
    """ViT-B/16 at 224 px: 17.6 GMACs per image (timm / the ViT paper's count) = 35.1 GFLOPs."""
    with torch.device("meta"):
        clip = open_clip.CLIP(**open_clip.get_model_config("ViT-B-16"))
    model = DiscoVLA(clip, DiscoVLAConfig(fusion=False, num_frames=12))
    flops = step_flops(model, batch=128, frames=12, text_len=32, pseudo_len=None)
    per_image = flops["towers"]["vision"]["forward"] / (128 * 12)
    lora = 12 * 197 * 8 * 768 * 8  # LoRA adds 8 T D r per block
    assert per_image - lora == pytest.approx(35.1e9, rel=0.01)
    # frozen weights: backward is input gradients only, about one more forward (not two)
    vision = flops["towers"]["vision"]
    assert 0.95 < vision["backward"] / vision["forward"] < 1.05
    assert vision["frozen_weight_grads"] > 0.9 * vision["forward"]
    full = step_flops(model, 128, 12, 32, 32, checkpointing=True)  # the pseudo branch adds text work
    assert full["model_flops"] > flops["model_flops"] and full["hardware_flops"] > full["model_flops"]


def test_peak_and_mfu():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 NVL") == 835e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA L40S") == 362e12
    assert peak_bf16_flops("NVIDIA L4") == 121e12
    assert peak_bf16_flops("NVIDIA A10G") is None
    assert peak_bf16_flops("cpu x2") is None
    assert mfu(989e12 * 0.5, 2.0, 989e12) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        mfu(1e12, 0.0, 989e12)


def test_benchmark_measure_step_on_cpu(capsys):
    """benchmarks/train_step.py imports without side effects and measures a step with and without
    checkpointing (same model FLOPs, more hardware FLOPs)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert capsys.readouterr().out == ""
    runs = [
        module.measure_step("tiny-clip", 2, 2, "cpu", ckpt, False, steps=1, warmup=0)
        for ckpt in (False, True)
    ]
    for run, ckpt in zip(runs, (False, True), strict=True):
        assert run["activation_checkpointing"] is ckpt and run["oom"] is False
        assert run["s_per_step"] > 0 and run["model_tflops_per_s"] > 0
        assert run["peak_mem_gib"] is None and run["mfu"] is None  # CPU: no GPU memory, no known peak
        assert (run["text_len"], run["pseudo_len"]) == (module.EOT_AT + 1, module.EOT_AT + 1)
    assert runs[0]["model_flops"] == runs[1]["model_flops"] == runs[0]["hardware_flops"]
    assert runs[1]["hardware_flops"] > runs[1]["model_flops"]
    lora = module.measure_step("tiny-clip", 2, 2, "cpu", steps=1, warmup=0, fusion=False)
    assert lora["pseudo_len"] is None and lora["model_flops"] < runs[0]["model_flops"]
    trend = module.measure_step("tiny-clip", 2, 2, "cpu", steps=1, warmup=0, trends=1)
    assert trend["trends"] == 1 and trend["oom"] is False and trend["s_per_step"] > 0
