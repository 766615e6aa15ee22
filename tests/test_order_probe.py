"""benchmarks/order_probe.py: its probes find order evidence where it is planted and only there, the slope
probes are antisymmetric in time, and its encodings and the model's own reversal test are the pipeline's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from discovla.ablation import run_one, variant_config
from discovla.evaluate import evaluate_model
from discovla.model import DiscoVLA
from tests.test_ablation import PARAMS

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("order_probe", REPO / "benchmarks/order_probe.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclass looks its module up
_spec.loader.exec_module(bench)


def _planted(videos: int, seed: int, in_words: bool = False, frames: int = 4, cells: int = 4, dim: int = 8):
    """Noise everywhere; grid cell 0 of each video moves along one direction, forward or backward in time
    (its sign), and each video's caption says which: in its text embedding, or with ``in_words`` only in
    its words (the embedding then is noise). The CLS embeddings carry no order."""
    gen = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (videos,), generator=gen).float() * 2 - 1
    direction = F.normalize(torch.ones(dim), dim=0)
    ramp = torch.linspace(-1.0, 1.0, frames)
    grid = torch.randn(videos, frames, cells, dim, generator=gen)
    grid[:, :, 0] += 3 * sign[:, None, None] * ramp[None, :, None] * direction
    said = 0.0 if in_words else 1.0
    text = F.normalize(
        said * sign[:, None] * direction + 0.3 * torch.randn(videos, dim, generator=gen), dim=-1
    )
    cls = torch.randn(videos, frames, dim, generator=gen)
    words = ["a square moves right, then it stops", "then a square moves left"] if in_words else ["then"] * 2
    captions = [words[int(s > 0)] for s in sign]
    return bench.SplitFeatures(cls, grid, text, torch.arange(videos), captions)


def test_probes_find_order_where_it_is_planted_and_only_there() -> None:
    train, held_out = _planted(600, seed=0), _planted(300, seed=1)
    acc = {}
    for kind in ("cls_slope", "patch_slope", "patch_mlp"):
        probe = bench.fit_probe(kind, train, steps=300, seed=0)
        acc[kind] = bench.probe_reversal(probe, held_out)
    assert acc["patch_slope"]["all"] > 95 and acc["patch_mlp"]["all"] > 80, acc
    assert 35 < acc["cls_slope"]["all"] < 65, acc  # the CLS embeddings hold no order: chance
    assert acc["patch_slope"]["ordered"] == acc["patch_slope"]["all"]  # every caption states an order


def test_ngram_probes_read_the_order_from_the_words() -> None:
    train, held_out = _planted(600, seed=0, in_words=True), _planted(300, seed=1, in_words=True)
    assert torch.allclose(train.ngrams.norm(dim=-1), torch.ones(600))
    words = bench.probe_reversal(bench.fit_probe("patch_mlp_ngram", train, steps=300, seed=0), held_out)
    embedding = bench.probe_reversal(bench.fit_probe("patch_slope", train, steps=300, seed=0), held_out)
    assert words["all"] > 90 and 35 < embedding["all"] < 65, (words, embedding)
    same = bench.ngram_counts(["A square, then", "a  square , then"])  # normalised before counting
    assert torch.equal(same[0], same[1])


def test_slope_probes_are_antisymmetric_in_time() -> None:
    data = _planted(20, seed=2)
    for kind in ("cls_slope", "patch_slope"):
        probe = bench.Probe(kind, frames=4, cells=4, dim=8)
        forward = probe(data.cls, data.grid)
        assert torch.allclose(probe(data.cls.flip(1), data.grid.flip(1)), -forward, atol=1e-6)
    with pytest.raises(ValueError, match="unknown probe"):
        bench.Probe("mean", frames=4, cells=4, dim=8)


def test_encodings_and_the_runs_own_reversal_test_are_the_pipelines(
    tiny_clip_factory, tmp_path: Path
) -> None:
    from tests.conftest import synthetic_features

    features = synthetic_features(n_train=12, n_test=4, n_val=6)
    run_one(PARAMS, features, tiny_clip_factory, "order", 1, tmp_path)
    model, _ = bench.finished_run(PARAMS, features, tiny_clip_factory(), "order", 1, tmp_path)
    val = bench.encode_split(model, features, "val", grid=2, batch_size=8)
    assert "_pool" not in vars(model.clip.visual)  # the class's pooling again after encoding
    assert val.cls.shape == (6, 4, 64) and val.grid.shape == (6, 4, 4, 64)
    pixels = features.pixels[features.split_videos("val")].float()
    with torch.no_grad():
        want = model.encode_frames(bench.normalise(pixels, features.meta["mean"], features.meta["std"]))
    assert torch.allclose(val.cls, want, atol=1e-5)
    ids = features.cap_tokens[torch.tensor(features.split_captions("val").index.to_numpy())]
    eot = model._pool_positions(ids)
    with torch.no_grad():
        pooled = model.encode_text(ids)
    assert "_text_head" not in vars(model)
    assert val.tokens.shape == (len(ids), ids.shape[1], 64)
    assert torch.allclose(
        val.tokens[torch.arange(len(ids)), eot], pooled, atol=1e-5
    )  # the EOT's is the pooled
    after = torch.arange(ids.shape[1])[None, :] > eot[:, None]
    assert after.any() and not val.tokens[after].any()  # nothing after the EOT
    ours = bench.model_reversal(model, val)
    theirs = evaluate_model(model, features, "val", 8, 16, dsl=False)["reversal"]
    assert ours["all"] == pytest.approx(theirs["all"], abs=1e-3)  # evaluate rounds to 3 digits


def test_grid_cells_are_the_towers_patch_tokens_by_place(tiny_clip_factory) -> None:
    """Against open_clip's own patch tokens (a frozen model: zero-initialised adapters), each 2 x 2 cell is
    the projected mean of its quadrant's patches, patches numbered row by row; a model that sees frame
    positions is refused (its reversal is not its encodings reversed)."""
    from tests.conftest import synthetic_features

    features = synthetic_features(n_train=4, n_test=2, n_val=3)
    model = DiscoVLA(tiny_clip_factory(), variant_config(PARAMS, "lora", 1, features.num_frames).model).eval()
    val = bench.encode_split(model, features, "val", grid=2, batch_size=8)
    pixels = features.pixels[features.split_videos("val")].flatten(0, 1).float()
    visual = model.clip.visual
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual(bench.normalise(pixels, features.meta["mean"], features.meta["std"]))
    side = int(round(tokens.shape[1] ** 0.5))
    rows, cols = torch.arange(side * side) // side, torch.arange(side * side) % side
    quadrant = (rows >= side // 2).long() * 2 + (cols >= side // 2).long()
    want = torch.stack([tokens[:, quadrant == q].mean(1) for q in range(4)], dim=1) @ visual.proj
    assert torch.allclose(val.grid.flatten(0, 1), want, atol=1e-5)

    tokens_cfg = variant_config(PARAMS, "order_tokens", 1, features.num_frames).model
    with pytest.raises(SystemExit, match="temporal_position"):
        bench.encode_split(DiscoVLA(tiny_clip_factory(), tokens_cfg), features, "val", grid=2)
