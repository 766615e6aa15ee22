"""DiscoVLA model: LoRA equivalence, IVFusion against a slow loop reference, gradients, state round trip."""

from __future__ import annotations

import copy
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from discovla.losses import discovla_loss, video_embedding
from discovla.model import Adapter, AdapterStateError, DiscoVLA, DiscoVLAConfig, LoRAAttention

TINY = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=5, head_width=16),
    text_cfg=dict(context_length=16, vocab_size=100, width=64, heads=4, layers=4),
)
# ViT-B-16 head widths (768 / 12 heads vision, 512 / 8 heads text), fewer layers and pixels to stay fast.
VITB_SHAPED = dict(
    embed_dim=512,
    vision_cfg=dict(image_size=32, patch_size=16, width=768, layers=4, head_width=64),
    text_cfg=dict(context_length=16, vocab_size=500, width=512, heads=8, layers=4),
)


def make_clip(spec: dict, seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)
    clip = open_clip.CLIP(**copy.deepcopy(spec)).eval()
    with torch.no_grad():  # non-trivial LayerNorm / bias values so mistakes in their use show
        for name, p in clip.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.05 * torch.randn_like(p))
    return clip


def make_tokens(n: int, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    """CLIP-like tokens: SOT, words, EOT (the largest id, argmax-pooled), zero padding; varied lengths."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, length, dtype=torch.long)
    for r in range(n):
        eot = int(torch.randint(2, length, (1,), generator=g))
        tokens[r, 0] = vocab - 2
        tokens[r, 1:eot] = torch.randint(1, vocab - 2, (eot - 1,), generator=g)
        tokens[r, eot] = vocab - 1
    return tokens


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's activation, written out (the reference adapter uses it)."""
    return x * torch.sigmoid(1.702 * x)


def randomise_trainable(model: DiscoVLA, std: float = 0.05, seed: int = 3) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0.0, std)


def pixels(b: int, f: int, size: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, f, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- slow reference: explicit loops and plain matmuls, no call into discovla's fused code ---------------
def ref_qkv(attn: LoRAAttention, x: torch.Tensor) -> torch.Tensor:
    y = x @ attn.in_proj_weight.T + attn.in_proj_bias
    if attn.lora_A is not None:
        y = y + (x @ attn.lora_A.T) @ attn.lora_B.T
    return y


def ref_heads_attend(attn: LoRAAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None):
    """q [Lq, D], k/v [Lk, D] -> out_proj(concat_h softmax(q_h k_h^T / sqrt(hd) + mask) v_h)."""
    hd = attn.head_dim
    outs = []
    for h in range(attn.num_heads):
        sl = slice(h * hd, (h + 1) * hd)
        scores = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
        if mask is not None:
            scores = scores + mask
        outs.append(torch.softmax(scores, dim=-1) @ v[:, sl])
    return torch.cat(outs, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def ref_block(block, x: torch.Tensor, mask=None) -> torch.Tensor:
    q, k, v = ref_qkv(block.attn, block.ln_1(x)).chunk(3, dim=-1)
    x = x + ref_heads_attend(block.attn, q, k, v, mask)
    return x + block.mlp(block.ln_2(x))


def ref_fusion_block(block, layer, xs: list, pool: list, valid: list, mask=None) -> list:
    """xs: the F sequences [T, D] of ONE video; pool[i]: pooled position; valid[i]: # keys of sequence i."""
    attn = block.attn
    qkvs = [ref_qkv(attn, block.ln_1(x)).chunk(3, dim=-1) for x in xs]
    keys, values = [], []
    for j, (_, k, v) in enumerate(qkvs):
        kj = k[: valid[j]]
        if layer.key_pos is not None:
            kj = kj + layer.key_pos[j]
        keys.append(kj)
        values.append(v[: valid[j]])
    keys, values = torch.cat(keys), torch.cat(values)
    out = []
    for i, (q, k, v) in enumerate(qkvs):
        o = ref_heads_attend(attn, q, k, v, mask)
        c2 = ref_heads_attend(attn, q[pool[i] : pool[i] + 1], keys, values)[0]
        ad = layer.adapter
        adapter = quick_gelu(o[pool[i]] @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias
        o = torch.cat([o[: pool[i]], (c2 + adapter)[None], o[pool[i] + 1 :]])
        x = xs[i] + o
        out.append(x + block.mlp(block.ln_2(x)))
    return out


def ref_encode_frames(model: DiscoVLA, px: torch.Tensor) -> torch.Tensor:
    visual = model.clip.visual
    blocks = list(visual.transformer.resblocks)
    n_fused = len(model.vision_fusion)
    videos = []
    for b in range(px.shape[0]):
        xs = [visual._embeds(px[b, f][None])[0] for f in range(px.shape[1])]
        for li, block in enumerate(blocks):
            if li < len(blocks) - n_fused:
                xs = [ref_block(block, x) for x in xs]
            else:
                layer = model.vision_fusion[li - len(blocks) + n_fused]
                t = xs[0].shape[0]
                xs = ref_fusion_block(block, layer, xs, [0] * len(xs), [t] * len(xs))
        videos.append(torch.stack([visual.ln_post(x[0]) @ visual.proj for x in xs]))
    return torch.stack(videos)


def ref_encode_pseudo(model: DiscoVLA, tokens: torch.Tensor) -> torch.Tensor:
    clip = model.clip
    blocks = list(clip.transformer.resblocks)
    n_fused = len(model.text_fusion)
    length = tokens.shape[-1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    videos = []
    for b in range(tokens.shape[0]):
        caps = tokens[b]
        eot = [int(c.argmax()) for c in caps]
        xs = [clip.token_embedding(c) + clip.positional_embedding[:length] for c in caps]
        for li, block in enumerate(blocks):
            if li < len(blocks) - n_fused:
                xs = [ref_block(block, x, causal) for x in xs]
            else:
                layer = model.text_fusion[li - len(blocks) + n_fused]
                xs = ref_fusion_block(block, layer, xs, eot, [e + 1 for e in eot], causal)
        videos.append(
            torch.stack([clip.ln_final(x[e]) @ clip.text_projection for x, e in zip(xs, eot, strict=True)])
        )
    return torch.stack(videos)


# ---- tests -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vitb_clip() -> open_clip.CLIP:
    return make_clip(VITB_SHAPED)


@pytest.mark.parametrize("spec_name", ["tiny", "vitb"])
def test_zero_init_without_fusion_equals_frozen_clip(spec_name, vitb_clip):
    ref = make_clip(TINY) if spec_name == "tiny" else vitb_clip
    frozen = copy.deepcopy(ref)
    model = DiscoVLA(copy.deepcopy(ref), DiscoVLAConfig(fusion=False))
    px = pixels(2, 3)
    vocab = ref.vocab_size
    tokens = make_tokens(5, ref.context_length, vocab)
    with torch.no_grad():
        img = model.encode_frames(px)
        want_img = frozen.encode_image(px.flatten(0, 1)).view(2, 3, -1)
        txt = model.encode_text(tokens)
        want_txt = frozen.encode_text(tokens)
        pseudo = model.encode_pseudo(tokens[:4].view(2, 2, -1))
    assert (img - want_img).abs().max() < 1e-5
    assert (txt - want_txt).abs().max() < 1e-5
    assert (pseudo.flatten(0, 1) - want_txt[:4]).abs().max() < 1e-5
    assert all(isinstance(b.attn, LoRAAttention) for b in model.clip.visual.transformer.resblocks)
    assert all(isinstance(b.attn, LoRAAttention) for b in model.clip.transformer.resblocks)


def test_lora_is_used_by_plain_open_clip_calls():
    clip = make_clip(TINY)
    frozen = copy.deepcopy(clip)
    model = DiscoVLA(clip, DiscoVLAConfig(fusion=False))
    randomise_trainable(model)
    px = pixels(2, 2)
    tokens = make_tokens(3, 16, 100)
    with torch.no_grad():
        ours = model.encode_frames(px).flatten(0, 1)
        assert (ours - clip.encode_image(px.flatten(0, 1))).abs().max() < 1e-5
        assert (ours - frozen.encode_image(px.flatten(0, 1))).abs().max() > 1e-3
        assert (model.encode_text(tokens) - clip.encode_text(tokens)).abs().max() < 1e-5


@pytest.mark.parametrize(
    "spec_name,temporal",
    [("tiny", False), ("tiny", True), ("vitb", False)],
    ids=["tiny", "tiny-tpos", "vitb"],
)
def test_fusion_matches_slow_reference(spec_name, temporal, vitb_clip):
    clip = make_clip(TINY) if spec_name == "tiny" else copy.deepcopy(vitb_clip)
    f = 3
    cfg = DiscoVLAConfig(vision_layers=3, text_layers=2, temporal_position=temporal, num_frames=f)
    model = DiscoVLA(clip, cfg)
    randomise_trainable(model, std=0.05 if spec_name == "tiny" else 0.02)
    px = pixels(2, f)
    tokens = make_tokens(2 * f, 12, clip.vocab_size).view(2, f, 12)
    with torch.no_grad():
        fast_v, slow_v = model.encode_frames(px), ref_encode_frames(model, px)
        fast_t, slow_t = model.encode_pseudo(tokens), ref_encode_pseudo(model, tokens)
        no_fusion = model.encode_text(tokens.flatten(0, 1)).view_as(fast_t)
    tol = 2e-5 * max(1.0, float(slow_v.abs().max()))
    assert (fast_v - slow_v).abs().max() < tol
    assert (fast_t - slow_t).abs().max() < 2e-5 * max(1.0, float(slow_t.abs().max()))
    assert (fast_t - no_fusion).abs().max() > 1e-3  # the fusion really changed the pseudo-caption features


def test_fusion_at_init_changes_cls_but_keeps_shapes():
    model = DiscoVLA(make_clip(TINY), DiscoVLAConfig(num_frames=4))
    px = pixels(3, 4)
    with torch.no_grad():
        fused = model.encode_frames(px)
        plain = model.clip.encode_image(px.flatten(0, 1)).view(3, 4, -1)
    assert fused.shape == (3, 4, 32)
    assert (fused - plain).abs().max() > 1e-4  # the video-level branch replaces the CLS attention output


def test_frame_order_invariance_and_temporal_position():
    px = pixels(2, 4)
    perm = torch.tensor([2, 0, 3, 1])
    model = DiscoVLA(make_clip(TINY), DiscoVLAConfig(num_frames=4))
    randomise_trainable(model)
    with torch.no_grad():
        v = model.video_embedding(model.encode_frames(px))
        v_perm = model.video_embedding(model.encode_frames(px[:, perm]))
    assert (v - v_perm).abs().max() < 1e-5

    tmodel = DiscoVLA(make_clip(TINY), DiscoVLAConfig(num_frames=4, temporal_position=True))
    randomise_trainable(tmodel, std=0.5)
    with torch.no_grad():
        v = tmodel.video_embedding(tmodel.encode_frames(px))
        v_perm = tmodel.video_embedding(tmodel.encode_frames(px[:, perm]))
        assert (v - v_perm).abs().max() > 1e-5
        with pytest.raises(ValueError, match="temporal_position"):
            tmodel.encode_frames(px[:, :3])


def test_video_embedding_is_normalised_mean():
    feats = torch.randn(3, 5, 8)
    want = F.normalize(F.normalize(feats, dim=-1).mean(1), dim=-1)
    assert torch.allclose(video_embedding(feats), want)
    assert torch.allclose(video_embedding(feats).norm(dim=-1), torch.ones(3))


def _loss(model: DiscoVLA, px, tokens, pseudo):
    return discovla_loss(
        model.encode_text(tokens),
        model.encode_frames(px),
        model.encode_pseudo(pseudo) if pseudo is not None else None,
        model.logit_scale,
        0.3,
        1.0,
        False,
        "reference",
    )["loss"]


def test_gradients_reach_only_trainable_parameters():
    model = DiscoVLA(make_clip(TINY), DiscoVLAConfig(num_frames=3)).train()
    assert not model.clip.training and model.vision_fusion.training
    px, tokens = pixels(4, 3), make_tokens(4, 16, 100)
    pseudo = make_tokens(12, 16, 100, seed=5).view(4, 3, 16)
    trainable = {id(p) for p in model.trainable_parameters()}

    _loss(model, px, tokens, pseudo).backward()  # at init (B = 0, W_up = 0): grads exist and are finite
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None and not p.requires_grad, name
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_B"))

    model.zero_grad(set_to_none=True)
    randomise_trainable(model)
    _loss(model, px, tokens, pseudo).backward()
    for name, p in model.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_adapter_is_quickgelu_bottleneck_with_reference_init():
    torch.manual_seed(0)
    dim, hidden = 64, 8
    ad = Adapter(dim, hidden)
    # Reference init: W_up, b_up exactly zero; b_down ~ N(0, 1e-6); W_down Xavier-uniform.
    assert torch.count_nonzero(ad.up.weight) == 0 and torch.count_nonzero(ad.up.bias) == 0
    assert 0 < ad.down.bias.abs().max() < 1e-5
    bound = math.sqrt(6.0 / (dim + hidden))
    w = ad.down.weight
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # uniform over the whole bound
    assert abs(w.std().item() - bound / math.sqrt(3.0)) < 0.1 * bound  # not nn.Linear's U(+-1/sqrt(dim))
    x = torch.randn(5, dim)
    assert torch.equal(ad(x), torch.zeros(5, dim))
    # Activation: x * sigmoid(1.702 x), not erf/tanh GELU (they differ by ~1e-2 at these scales).
    with torch.no_grad():
        ad.up.weight.normal_(0.0, 0.5)
        ad.up.bias.normal_(0.0, 0.5)
    h = x @ w.T + ad.down.bias
    want = quick_gelu(h) @ ad.up.weight.T + ad.up.bias
    torch.testing.assert_close(ad(x), want, rtol=1e-5, atol=1e-5)
    erf_gelu = F.gelu(h) @ ad.up.weight.T + ad.up.bias
    assert (ad(x) - erf_gelu).abs().max() > 1e-3
    assert isinstance(ad.act, QuickGELU)


def test_trainable_names_and_counts():
    cfg = DiscoVLAConfig(lora_rank=4, vision_layers=2, text_layers=1, adapter_dim=6)
    model = DiscoVLA(make_clip(TINY), cfg)
    dv, dt = 64, 64
    want = 5 * 4 * 4 * dv + 4 * 4 * 4 * dt + 2 * (2 * dv * 6 + 6 + dv) + 1 * (2 * dt * 6 + 6 + dt)
    assert model.num_trainable() == want
    names = set(model.adapter_state_dict())
    assert "clip.visual.transformer.resblocks.0.attn.lora_A" in names
    assert "text_fusion.0.adapter.up.weight" in names
    assert all(("lora_" in n) or ("_fusion." in n) for n in names)
    no_lora = DiscoVLA(make_clip(TINY), DiscoVLAConfig(lora_rank=0, fusion=False))
    assert no_lora.num_trainable() == 0 and no_lora.config_dict()["lora_rank"] == 0


def test_vit_b16_trainable_count_is_about_056m():
    with torch.device("meta"):
        clip = open_clip.CLIP(**open_clip.get_model_config("ViT-B-16"))
    model = DiscoVLA(clip, DiscoVLAConfig())
    lora = 12 * 8 * 4 * 768 + 12 * 8 * 4 * 512  # A (r x D) + B (3D x r) per layer
    adapters = 4 * (2 * 768 * 8 + 8 + 768) + 2 * (2 * 512 * 8 + 8 + 512)
    assert model.num_trainable() == lora + adapters
    assert abs(model.num_trainable() - 0.56e6) < 0.01e6


def test_adapter_state_round_trip():
    model = DiscoVLA(make_clip(TINY), DiscoVLAConfig(num_frames=2))
    randomise_trainable(model)
    sd = model.adapter_state_dict()
    other = DiscoVLA(make_clip(TINY), DiscoVLAConfig(num_frames=2))
    px, tokens = pixels(2, 2), make_tokens(4, 16, 100).view(2, 2, 16)
    with torch.no_grad():
        assert (other.encode_frames(px) - model.encode_frames(px)).abs().max() > 1e-4
        other.load_adapter_state_dict(sd)
        assert torch.equal(other.encode_frames(px), model.encode_frames(px))
        assert torch.equal(other.encode_pseudo(tokens), model.encode_pseudo(tokens))
    sd["vision_fusion.0.adapter.up.weight"].add_(1.0)  # a copy: the model must not change
    assert not torch.equal(
        model.adapter_state_dict()["vision_fusion.0.adapter.up.weight"],
        sd["vision_fusion.0.adapter.up.weight"],
    )


def test_load_adapter_state_mismatch_errors():
    model = DiscoVLA(make_clip(TINY), DiscoVLAConfig())
    sd = model.adapter_state_dict()
    small = DiscoVLA(make_clip(TINY), DiscoVLAConfig(lora_rank=4))
    with pytest.raises(AdapterStateError, match="shape"):
        small.load_adapter_state_dict(sd)
    sd.pop("text_fusion.1.adapter.up.bias")
    with pytest.raises(AdapterStateError, match="missing"):
        model.load_adapter_state_dict(sd)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="vision_layers"):
        DiscoVLA(make_clip(TINY), DiscoVLAConfig(vision_layers=9))
    with pytest.raises(ValueError, match="LoRA rank must be >= 0"):
        DiscoVLA(make_clip(TINY), DiscoVLAConfig(lora_rank=-1))
    model = DiscoVLA(make_clip(TINY), DiscoVLAConfig())
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.zeros(2, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, F, 3, H, W\]"):
        model.encode_frames(torch.zeros(2, 3, 32, 32))
    with pytest.raises(TypeError, match="open_clip.CLIP"):
        DiscoVLA(torch.nn.Linear(2, 2), DiscoVLAConfig())


def test_config_from_params_and_json():
    import json

    from discovla.config import params_from_dict
    from discovla.pipeline import model_config

    params = params_from_dict(
        {"lora": {"rank": 4}, "fusion": {"vision_layers": 2}, "frames": {"num_frames": 6}}
    )
    cfg = model_config(params, num_frames=6)
    assert (cfg.lora_rank, cfg.vision_layers, cfg.num_frames, cfg.text_layers) == (4, 2, 6, 2)
    model = DiscoVLA(make_clip(TINY), cfg)
    assert json.loads(json.dumps(model.config_dict())) == model.config_dict()
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


# ---- activation checkpointing -----------------------------------------------------------------------------
def _step(model: DiscoVLA, px, tokens, pseudo) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training step's loss and trainable gradients (no pseudo captions: alpha = beta = 0)."""
    model.zero_grad(set_to_none=True)
    p = model.encode_pseudo(pseudo) if pseudo is not None else None
    w = 0.3 if pseudo is not None else 0.0
    loss = discovla_loss(model.encode_text(tokens), model.encode_frames(px), p, model.logit_scale, w, w)[
        "loss"
    ]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("fusion", [False, True], ids=["lora", "fusion"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(fusion):
    from unittest import mock

    import discovla.model.discovla as dmod

    cfg = DiscoVLAConfig(
        fusion=fusion, vision_layers=3, text_layers=2, num_frames=3, temporal_position=fusion
    )
    model = DiscoVLA(make_clip(TINY), cfg).train()
    randomise_trainable(model)
    px, tokens = pixels(4, 3), make_tokens(4, 16, 100)
    pseudo = make_tokens(12, 16, 100, seed=5).view(4, 3, 16) if fusion else None
    assert not model.activation_checkpointing
    with mock.patch.object(dmod, "checkpoint", wraps=dmod.checkpoint) as spy:
        loss_off, grads_off = _step(model, px, tokens, pseudo)
        assert spy.call_count == 0
        assert model.set_activation_checkpointing(True) is model and model.activation_checkpointing
        loss_on, grads_on = _step(model, px, tokens, pseudo)
        # every residual block of every tower run (frames, captions, pseudo captions), once each
        n_text = len(model.clip.transformer.resblocks)
        want = len(model.clip.visual.transformer.resblocks) + n_text * (2 if fusion else 1)
        assert spy.call_count == want
        assert all(call.kwargs["use_reentrant"] is False for call in spy.call_args_list)
        spy.reset_mock()
        with torch.no_grad():  # inference: nothing to recompute, no checkpoint
            feats = model.encode_frames(px)
        assert spy.call_count == 0
    assert torch.equal(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name in grads_off:
        assert torch.equal(grads_on[name], grads_off[name]), name
    assert all(g.abs().sum() > 0 for g in grads_on.values())
    model.set_activation_checkpointing(False)
    with torch.no_grad():
        assert torch.equal(model.encode_frames(px), feats)
