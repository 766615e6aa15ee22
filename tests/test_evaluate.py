"""Evaluation wiring: zero-shot baseline and a trained model on a synthetic feature cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from discovla.evaluate import evaluate_model, score, zeroshot
from discovla.model import DiscoVLA, DiscoVLAConfig


def test_zeroshot_reports_plain_dsl_and_twins(features) -> None:
    m = zeroshot(features, "test", chunk_size=4, dsl=True)
    assert m["t2v"]["queries"] == 6 and m["v2t"]["queries"] == 6
    assert set(m["dsl"]) == {"t2v", "v2t"}
    assert "order" in m["twins"]
    assert len(m["ranks"]["t2v"]) == 6


def test_perfect_embeddings_give_perfect_recall_and_twins(features) -> None:
    vids = features.split_videos("test")
    video = F.normalize(torch.randn(len(vids), 16), dim=-1)
    caps = features.split_captions("test")
    local = {int(v): i for i, v in enumerate(vids)}
    text = video[[local[int(v)] for v in caps.video_index]]
    m = score(text, video, features, "test", chunk_size=3, logit_scale=100.0, dsl=False)
    assert m["t2v"]["R@1"] == 100.0 and m["v2t"]["R@1"] == 100.0
    assert m["twins"]["order"] == 100.0


def test_trained_model_path_uses_video_level_similarity_only(features, tiny_clip_factory) -> None:
    cfg = DiscoVLAConfig(lora_rank=2, vision_layers=2, text_layers=1, num_frames=4)
    model = DiscoVLA(tiny_clip_factory(), cfg)
    a = evaluate_model(model, features, "test", batch_size=8, chunk_size=4, dsl=False)
    features.pseudo_tokens.zero_()  # pseudo captions must not matter at test time
    b = evaluate_model(model, features, "test", batch_size=8, chunk_size=4, dsl=False)
    assert a["t2v"]["queries"] == 6
    assert (a["ranks"]["t2v"] == b["ranks"]["t2v"]).all() and a["t2v"] == b["t2v"]
