"""The shapes world as the stage writes it: determinism, twins, captions, real mp4s, stills and metrics.

Units of the package are tested in ``test_shapes_sampling.py`` and ``test_shapes_language.py``.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from helpers.stages import stage_command
from PIL import Image

from discovla.config import ShapesParams
from discovla.data import shapes as S
from discovla.data.registry import load_dataset
from discovla.data.shapes.language import _tokens
from discovla.ffmpeg import ffmpeg_exe

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    seed=7,
    train_videos=12,
    val_videos=6,
    test_videos=8,
    size=32,
    train_captions=3,
    order_twin_fraction=0.3,
    content_twin_fraction=0.4,
    stills_train=16,
    stills_val=16,
)
PARAMS = ShapesParams(**TINY)


def decode(path: Path, size: int) -> np.ndarray:
    raw = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, size, size, 3)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stage script run in a scratch repo with tiny params (2 workers), as dvc.yaml runs it."""
    work = tmp_path_factory.mktemp("stage")
    (work / "params.yaml").write_text(yaml.safe_dump({"shapes": TINY}))
    res = subprocess.run(stage_command("shapes"), cwd=work, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return work


@pytest.fixture(scope="module")
def specs() -> dict[str, S.VideoSpec]:
    return {s.video_id: s for s in S.sample_specs(PARAMS)}


def test_stage_writes_world_and_metrics(world: Path) -> None:
    root = world / "data" / "shapes"
    metrics = json.loads((world / "metrics" / "info" / "shapes.json").read_text())
    caps = pd.read_csv(root / "captions.csv", dtype=str)
    videos = sorted(p.stem for p in (root / "videos").glob("*.mp4"))
    assert videos == sorted(caps.video_id.unique())
    for split, total in (("train", 12), ("val", 6), ("test", 8)):
        m = metrics["splits"][split]
        assert m["videos"] == total == caps[caps.split == split].video_id.nunique()
        assert m["captions"] == (caps.split == split).sum()
    assert metrics["stills"]["train"]["images"] == 16 and metrics["disk_mb"]["videos"] > 0
    assert metrics["seconds"] > 0 and metrics["videos_per_s"] > 0
    ds = load_dataset("shapes", root)
    assert len(ds.videos) == 26 and set(ds.videos.split) == {"train", "val", "test"}
    assert not list(root.parent.glob(".shapes.*"))  # no temporary leftovers


def test_captions_per_split_and_language(world: Path) -> None:
    caps = pd.read_csv(world / "data" / "shapes" / "captions.csv", dtype=str)
    per_video = caps.groupby("video_id").size()
    split_of = caps.drop_duplicates("video_id").set_index("video_id").split
    assert (per_video[split_of[split_of == "test"].index] == 1).all()
    assert (per_video[split_of[split_of != "test"].index] == 3).all()
    assert caps.caption.map(_tokens).max() <= S.MAX_CAPTION_TOKENS
    # the language discrepancy: still-caption place phrases never appear in video captions
    for text in caps.caption:
        assert not S.caption_attributes(text)["positions"], text


def test_generation_is_deterministic_and_worker_independent(world: Path, tmp_path: Path) -> None:
    first, other = world / "data" / "shapes", tmp_path / "again"
    S.generate_world(PARAMS, other, workers=1)
    for name in ("captions.csv", "twins.csv"):
        assert (first / name).read_bytes() == (other / name).read_bytes()
    assert pq.read_table(first / "frame_truth.parquet").equals(pq.read_table(other / "frame_truth.parquet"))
    assert pq.read_table(first / "stills/val.parquet").equals(pq.read_table(other / "stills/val.parquet"))
    for vid in ("train00000", "test00001"):
        assert np.array_equal(
            decode(first / f"videos/{vid}.mp4", 32), decode(other / f"videos/{vid}.mp4", 32)
        )


def test_mp4s_decode_to_rendered_frames(world: Path, specs: dict[str, S.VideoSpec]) -> None:
    root = world / "data" / "shapes"
    for vid, spec in specs.items():
        frames = decode(root / "videos" / f"{vid}.mp4", 32)
        assert frames.shape == (20, 32, 32, 3)
        err = np.abs(frames.astype(np.int16) - S.render_video(spec)).mean()
        assert err < 12, (vid, err)


def test_twins_file_and_properties(world: Path, specs: dict[str, S.VideoSpec]) -> None:
    root = world / "data" / "shapes"
    twins = pd.read_csv(root / "twins.csv", dtype=str)
    caps = pd.read_csv(root / "captions.csv", dtype=str)
    first_cap = caps.drop_duplicates("video_id").set_index("video_id").caption
    pairs = set(zip(twins.video_id, twins.twin_id, twins.kind, strict=True))
    assert {(b, a, k) for a, b, k in pairs} == pairs  # both directions
    assert set(twins.kind) == {"order", "content"}
    for row in twins.itertuples():
        assert specs[row.video_id].split == specs[row.twin_id].split == row.split
        assert first_cap[row.video_id] != first_cap[row.twin_id]
    for spec in specs.values():
        if spec.twin_kind is None:
            continue
        base = specs[spec.twin_of]
        fb, ft = S.render_video(base), S.render_video(spec)
        if spec.twin_kind == "order":
            assert np.array_equal(ft, fb[::-1])
            assert sorted(f.tobytes() for f in ft) == sorted(f.tobytes() for f in fb)
        else:
            assert Counter((o.shape, o.colour, o.size) for o in spec.objects) == Counter(
                (o.shape, o.colour, o.size) for o in base.objects
            )
            assert [(o.x, o.y) for o in spec.objects] == [(o.x, o.y) for o in base.objects]
            assert [o.role() for o in spec.objects] != [o.role() for o in base.objects]
            assert Counter(o.role() for o in spec.objects) == Counter(o.role() for o in base.objects)
            assert not np.array_equal(ft, fb)


def test_order_twin_caption_reverses_motion(specs: dict[str, S.VideoSpec]) -> None:
    twin = next(s for s in specs.values() if s.twin_kind == "order")
    base = S.semantic_objects(specs[twin.twin_of])
    rev = S.semantic_objects(twin)
    assert [S.OPPOSITE[o.motion] for o in base] == [o.motion for o in rev]
    swap = {"appear": "disappear", "disappear": "appear", "change": "change", "none": "none"}
    assert [swap[o.event] for o in base] == [o.event for o in rev]


def test_frame_truth_matches_frames(world: Path, specs: dict[str, S.VideoSpec]) -> None:
    truth = pd.read_parquet(world / "data" / "shapes" / "frame_truth.parquet")
    assert str(truth.source_frame.dtype) == "int32" and str(truth.time.dtype) == "float64"
    assert len(truth) == 20 * len(specs)
    np.testing.assert_allclose(truth.time, truth.source_frame / 10)
    for row in truth.iloc[::7].itertuples():
        objs = S.frame_objects(specs[row.video_id], row.source_frame)
        attrs = S.caption_attributes(row.caption)
        assert sorted(attrs["colours"]) == sorted(o.colour for o in objs)
        assert sorted(attrs["shapes"]) == sorted(o.shape for o in objs)


def test_stills_images_and_captions(world: Path) -> None:
    table = pd.read_parquet(world / "data" / "shapes" / "stills" / "train.parquet")
    assert list(table.columns) == ["image", "caption"] and len(table) == 16
    for png, cap in zip(table.image, table.caption, strict=True):
        img = np.asarray(Image.open(io.BytesIO(png)))
        assert img.shape == (32, 32, 3)
        attrs = S.caption_attributes(cap)
        n = len(attrs["shapes"])
        assert 1 <= n <= 3 and len(attrs["colours"]) == len(attrs["sizes"]) == len(attrs["positions"]) == n
        for colour in attrs["colours"]:  # every named colour is drawn
            assert (img == np.array(S.RGB[colour], np.uint8)).all(-1).any()
