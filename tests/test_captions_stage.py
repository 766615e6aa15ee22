"""The captions stage on a tiny fake shapes world: BLIP and oracle captioners, checks, import/export."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.stages import stage_command

from discovla.artifacts.captions import (
    CAPTIONS_SCHEMA,
    check_one_caption_per_frame,
    export_pseudo_captions,
    import_pseudo_captions,
    read_captions,
    resample_uniform,
    write_captions,
)
from discovla.artifacts.frames import PARQUET_OPTIONS, encode_frames, frames_schema
from discovla.captioning import make_captions
from discovla.data.shapes import sample_still, still_caption
from discovla.images import encode_png
from discovla.text import CaptionsError
from discovla.tiny_blip import TinyBlipSpec, pretrain_tiny_captioner

VIDEOS = ["v0", "video_1", "v2"]
TIMESTAMPS = [0.12, 0.63, 1.18, 1.71]  # nearest source frames at 10 fps: 1, 6, 12, 17
FPS, SOURCE_FRAMES = 10, 20


def _still(seed: int, i: int, size: int) -> tuple[np.ndarray, str]:
    img, objs = sample_still(np.random.default_rng([seed, i]), size)
    return img, still_caption(objs)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/frames/shard-*.parquet`` (two shards) and ``data/shapes/frame_truth.parquet``."""
    root = tmp_path_factory.mktemp("world")
    rows = []
    for v, vid in enumerate(VIDEOS):
        for f, t in enumerate(TIMESTAMPS):
            img, _ = _still(v, f, 32)
            rows.append({"video_id": vid, "frame": f, "timestamp": t, "image": encode_frames(img[None])[0]})
    frames = pd.DataFrame(rows).astype({"frame": "int32"})
    (root / "data/frames").mkdir(parents=True)
    for name, part in (("shard-00000", frames.iloc[:7]), ("shard-00001", frames.iloc[7:])):
        table = pa.Table.from_pandas(part, schema=frames_schema(32), preserve_index=False)
        pq.write_table(table, root / f"data/frames/{name}.parquet", **PARQUET_OPTIONS)
    truth = [
        {"video_id": vid, "source_frame": s, "time": s / FPS, "caption": _still(100 + v, s, 64)[1]}
        for v, vid in enumerate(VIDEOS)
        for s in range(SOURCE_FRAMES)
    ]
    (root / "data/shapes").mkdir(parents=True)
    pd.DataFrame(truth).astype({"source_frame": "int32"}).to_parquet(root / "data/shapes/frame_truth.parquet")
    return root


def _expected_truth(world: Path) -> list[str]:
    truth = pd.read_parquet(world / "data/shapes/frame_truth.parquet").set_index(["video_id", "source_frame"])
    return [truth.caption[(vid, round(t * FPS))] for vid in VIDEOS for t in TIMESTAMPS]


def test_oracle_writes_the_nearest_ground_truth_caption(world: Path) -> None:
    captions, metrics = make_captions("oracle", world / "data/frames", root=world / "data/shapes")
    assert captions.caption.tolist() == _expected_truth(world)
    assert captions.video_id.tolist() == [v for v in VIDEOS for _ in TIMESTAMPS]
    assert metrics["frames"] == 12 and metrics["videos"] == 3 and metrics["empty_captions"] == 0
    assert metrics["agreement"]["exact_match"] == 1.0 and metrics["agreement"]["colours"] == 1.0


def test_oracle_needs_the_shapes_world(world: Path) -> None:
    with pytest.raises(CaptionsError, match="oracle needs the shapes world"):
        make_captions("oracle", world / "data/frames", dataset="folder", root=world)


def test_tiny_captioner_captions_real_frames(world: Path, tmp_path: Path) -> None:
    stills = [_still(7, i, 64) for i in range(16)]
    spec = TinyBlipSpec(
        patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, heads=2, mlp_ratio=2
    )
    images = [encode_png(img) for img, _ in stills]  # PNG bytes, 64 px, like the stills corpus
    pretrain_tiny_captioner(
        images, [c for _, c in stills], tmp_path / "blip", epochs=1, batch_size=4, spec=spec, device="cpu"
    )
    captions, metrics = make_captions(
        str(tmp_path / "blip"),
        world / "data/frames",
        batch_size=5,
        max_new_tokens=6,
        root=world / "data/shapes",
    )
    assert len(captions) == 12 and captions.caption.map(lambda c: isinstance(c, str)).all()
    assert captions.caption.map(lambda c: len(c.split()) <= 6).all()
    assert set(metrics) >= {"frames", "empty_captions", "seconds", "captions_per_s", "agreement"}
    assert 0 <= metrics["unfinished_captions"] <= 12 and metrics["device"] == "cpu"
    assert metrics["empty_captions"] == int((captions.caption == "").sum())
    assert set(metrics["agreement"]) == {"exact_match", "colours", "shapes", "sizes", "positions"}
    write_captions(tmp_path / "captions.parquet", captions)
    table = pq.read_table(tmp_path / "captions.parquet")
    assert table.schema.equals(CAPTIONS_SCHEMA) and table.num_rows == 12
    pd.testing.assert_frame_equal(read_captions(tmp_path / "captions.parquet"), captions)
    with pytest.raises(CaptionsError, match="not found"):
        read_captions(tmp_path / "none.parquet")


def test_one_caption_per_frame_is_enforced() -> None:
    frames = pd.DataFrame({"video_id": ["a", "a", "b"], "frame": [0, 1, 0]})
    good = frames.assign(caption=["x", "y", ""])
    check_one_caption_per_frame(frames, good)  # an empty caption is allowed (counted in the metrics)
    with pytest.raises(CaptionsError, match="2 caption rows for 3"):
        check_one_caption_per_frame(frames, good.iloc[:2])
    with pytest.raises(CaptionsError, match="duplicate"):
        check_one_caption_per_frame(frames, good.iloc[[0, 0, 2]])
    with pytest.raises(CaptionsError, match=r"\('a', 1\) has no caption"):
        check_one_caption_per_frame(frames, good.assign(frame=[0, 2, 0]))
    with pytest.raises(CaptionsError, match="null"):
        check_one_caption_per_frame(frames, good.assign(caption=["x", None, "z"]))


def test_export_import_round_trip(world: Path, tmp_path: Path) -> None:
    captions, _ = make_captions("oracle", world / "data/frames", root=world / "data/shapes")
    shuffled = captions.sample(frac=1.0, random_state=0)
    export_pseudo_captions(shuffled, tmp_path / "pseudo.json")
    raw = json.loads((tmp_path / "pseudo.json").read_text())
    assert sorted(raw) == sorted(VIDEOS) and all(len(v) == len(TIMESTAMPS) for v in raw.values())
    assert raw["v2"] == captions[captions.video_id == "v2"].sort_values("frame").caption.tolist()
    back = import_pseudo_captions(tmp_path / "pseudo.json", captions[["video_id", "frame"]])
    pd.testing.assert_frame_equal(back, captions.reset_index(drop=True), check_dtype=False)
    assert back.attrs["import"] == {"videos": 3, "resampled_videos": 0, "ignored_keys": 0}
    via_stage, _ = make_captions(
        str(tmp_path / "pseudo.json"), world / "data/frames", root=world / "data/shapes"
    )
    assert via_stage.caption.tolist() == captions.caption.tolist()


def test_import_suffix_keys_resampling_and_errors(tmp_path: Path) -> None:
    frames = pd.DataFrame({"video_id": ["video_1"] * 4 + ["v2"] * 4, "frame": [0, 1, 2, 3] * 2})
    raw = {f"video_1_{i}": f"Caption  {i}" for i in (3, 1, 0, 2, 10, 4, 5, 6)}  # 8 parts, numeric order
    raw |= {"v2": ["a", "b"], "other_0": "ignored"}
    (tmp_path / "p.json").write_text(json.dumps(raw))
    out = import_pseudo_captions(tmp_path / "p.json", frames)
    ordered = [f"caption {i}" for i in (0, 1, 2, 3, 4, 5, 6, 10)]
    assert out.caption.tolist()[:4] == resample_uniform(ordered, 4) == [ordered[i] for i in (1, 3, 5, 7)]
    assert out.caption.tolist()[4:] == ["a", "a", "b", "b"]
    assert out.attrs["import"] == {"videos": 2, "resampled_videos": 2, "ignored_keys": 1}
    with pytest.raises(CaptionsError, match="2 captions for 4 frames"):
        import_pseudo_captions(tmp_path / "p.json", frames, resample=False)
    with pytest.raises(CaptionsError, match="no pseudo captions for video 'v3'"):
        import_pseudo_captions(tmp_path / "p.json", pd.concat([frames, frames.assign(video_id="v3")]))
    (tmp_path / "bad.json").write_text(json.dumps({"v2": [1, 2]}))
    with pytest.raises(CaptionsError, match="list of captions"):
        import_pseudo_captions(tmp_path / "bad.json", frames)


def test_stage_script_writes_outputs(world: Path, tmp_path: Path) -> None:
    work = tmp_path / "repo"
    (work / "data").mkdir(parents=True)
    (work / "data/frames").symlink_to(world / "data/frames")
    (work / "params.yaml").write_text(
        f"data:\n  dataset: shapes\n  root: {world / 'data/shapes'}\ncaptioner:\n  model: oracle\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(stage_command("captions"), cwd=work, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert pq.read_table(work / "data/captions.parquet").num_rows == 12
    metrics = json.loads((work / "metrics/captions.json").read_text())
    assert metrics["captioner"] == "oracle" and metrics["agreement"]["exact_match"] == 1.0
    (work / "params.yaml").write_text(
        f"data:\n  dataset: shapes\n  root: {world / 'data/shapes'}\ncaptioner:\n  model: models/none\n"
    )
    res = subprocess.run(stage_command("captions"), cwd=work, capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stderr.startswith("error: captioner.model:"), res.stderr
