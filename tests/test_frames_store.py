"""The frames store's writer and reader over a small folder dataset mixing good and bad videos: outputs,
metrics, resume."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import discovla.extraction as store
from discovla.artifacts.frames import (
    PARQUET_OPTIONS,
    FramesStoreError,
    count_frames,
    decode_frames,
    encode_frames,
    iter_frame_batches,
    read_frame_images,
    read_frames,
    read_frames_index,
    read_videos,
)
from discovla.data.registry import load_dataset
from discovla.extraction import extract_frames
from discovla.ffmpeg import ffmpeg_exe
from discovla.sampling import sample_frames

F, SIZE = 4, 16


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *args], check=True)


def make_dataset(root: Path, bad: bool = True) -> Path:
    """videos/ + captions.csv: four good clips (one of 3 frames) and, if ``bad``, four broken ones."""
    vids = root / "videos"
    vids.mkdir(parents=True)
    good = {"g0": ("testsrc", 20), "g1": ("testsrc2", 15), "g2": ("rgbtestsrc", 3), "g3": ("smptebars", 12)}
    for vid, (src, frames) in good.items():
        lavfi = ["-f", "lavfi", "-i", f"{src}=size=40x24:rate=10"]
        ffmpeg(*lavfi, "-frames:v", str(frames), "-pix_fmt", "yuv420p", str(vids / f"{vid}.mp4"))
    rows = [(vid, "train") for vid in good]
    if bad:
        (vids / "b_empty.mp4").write_bytes(b"")
        (vids / "b_text.mp4").write_text("not a video at all\n" * 10)
        ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000", "-t", "0.3", "-c:a", "aac", str(vids / "b_audio.mp4"))
        rows += [("b_empty", "test"), ("b_text", "val"), ("b_audio", "test"), ("b_missing", "val")]
    order = [rows[i] for i in (0, 4, 1, 5, 2, 6, 3, 7)] if bad else rows  # interleave good and bad
    captions = pd.DataFrame(order, columns=["video_id", "split"])
    captions.insert(1, "caption", "a caption of " + captions.video_id)
    captions.to_csv(root / "captions.csv", index=False)
    return root


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds"))


def run(videos: pd.DataFrame, out: Path, work: Path, **kw: object) -> dict:
    kw.setdefault("workers", 2)
    return extract_frames(
        videos, out, F, SIZE, shard_rows=5, work_dir=work, batch_videos=3, progress=False, **kw
    )


def decode(cells: pd.Series) -> np.ndarray:
    """Raw RGB cells as uint8 [N, SIZE, SIZE, 3], decoded independently of the reader."""
    return np.stack([np.frombuffer(b, np.uint8).reshape(SIZE, SIZE, 3) for b in cells])


def read_shards(out: Path) -> pd.DataFrame:
    shards = sorted(out.glob("shard-*.parquet"))
    return pd.concat([pq.read_table(p).to_pandas() for p in shards], ignore_index=True)


def test_extract_frames_outputs(dataset_root: Path, tmp_path: Path) -> None:
    ds = load_dataset("folder", dataset_root)
    out, work = tmp_path / "frames", tmp_path / "work"
    m = run(ds.videos, out, work)

    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    assert dict(zip(skipped.video_id, skipped.reason, strict=True)) == {
        "b_empty": "empty file",
        "b_text": "not a video: moov atom not found",
        "b_audio": "no video stream",
        "b_missing": "missing file",
    }
    assert list(skipped.video_id) == ["b_empty", "b_text", "b_audio", "b_missing"]  # dataset order
    videos = pd.read_csv(out / "videos.csv")
    assert list(videos.columns) == ["video_id", "split", "source_frames", "duration", "repeated"]
    assert list(videos.video_id) == ["g0", "g1", "g2", "g3"]
    assert list(videos.source_frames) == [20, 15, 3, 12]
    assert list(videos.repeated) == [False, False, True, False]

    frames = read_shards(out)
    assert m["videos"] == 8 and m["done"] == 4 and m["skipped"] == 4 and m["repeated"] == 1
    reasons = {"empty file": 1, "missing file": 1, "no video stream": 1, "not a video": 1}
    assert m["skipped_by_reason"] == reasons
    assert m["frames"] == len(frames) == 4 * F
    assert m["shards"] == math.ceil(4 * F / 5) == len(list(out.glob("shard-*.parquet")))
    assert all(pq.read_metadata(p).num_rows <= 5 for p in out.glob("shard-*.parquet"))
    assert m["videos_per_s"] > 0 and m["resumed"] == 0
    assert not work.exists()  # resume parts removed after success

    # rows in dataset order, then frame; images round-trip to exactly what sample_frames returns
    assert list(frames.video_id) == [v for v in ["g0", "g1", "g2", "g3"] for _ in range(F)]
    assert list(frames.frame) == list(range(F)) * 4 and frames.frame.dtype == np.int32
    for vid, group in frames.groupby("video_id", sort=False):
        s = sample_frames(dataset_root / "videos" / f"{vid}.mp4", F, SIZE)
        assert np.array_equal(decode(group.image), s.frames)
        assert np.array_equal(group.timestamp.to_numpy(), s.timestamps)


def test_reader_reads_what_the_writer_wrote(dataset_root: Path, tmp_path: Path) -> None:
    ds = load_dataset("folder", dataset_root)
    out = tmp_path / "frames"
    run(ds.videos, out, tmp_path / "work")
    raw = read_shards(out)
    assert count_frames(out) == len(raw) == 4 * F
    index = read_frames_index(out)
    assert index.equals(raw[["video_id", "frame", "timestamp"]])
    keys, images = read_frames(out)
    assert keys.equals(raw[["video_id", "frame"]]) and images.shape == (4 * F, SIZE, SIZE, 3)
    assert np.array_equal(images, decode(raw.image))
    batches = list(iter_frame_batches(out, 3))
    assert [len(k) for k, _ in batches] == [3, 2, 3, 2, 3, 2, 1]  # per shard of 5, then 3 at a time
    assert np.array_equal(np.concatenate([im for _, im in batches]), images)
    assert read_videos(out).equals(pd.read_csv(out / "videos.csv", dtype={"video_id": str}))
    with pytest.raises(FramesStoreError, match="run the frames stage first"):
        read_videos(tmp_path / "nowhere")
    with pytest.raises(FramesStoreError, match="run the frames stage first"):
        count_frames(tmp_path / "nowhere")


def test_resume_after_crash_gives_identical_output(
    dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = load_dataset("folder", dataset_root)
    ref, work = tmp_path / "ref", tmp_path / "work"
    run(ds.videos, ref, work)

    real_write, real_process = store._write_part, store._process
    calls: list[str] = []

    def crash_after_first(path: Path, *a: object) -> None:
        if path.name != "part-00000.parquet":
            raise RuntimeError("simulated crash")
        real_write(path, *a)

    monkeypatch.setattr(store, "_write_part", crash_after_first)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(ds.videos, out, work, workers=1)
    assert not out.exists()  # no half-written output
    assert [p.name for p in work.glob("*/part-*")] == ["part-00000.parquet"]

    monkeypatch.setattr(store, "_write_part", real_write)
    monkeypatch.setattr(store, "_process", lambda t: calls.append(t.video_id) or real_process(t))
    m = run(ds.videos, out, work, workers=1)
    assert m["resumed"] == 3 and sorted(calls) == sorted(ds.videos.video_id[3:])  # only the missing batches
    for name in ("videos.csv", "skipped.csv"):
        assert (out / name).read_text() == (ref / name).read_text()
    assert read_shards(out).equals(read_shards(ref))
    assert not work.exists()


def test_changed_params_do_not_reuse_parts(dataset_root: Path, tmp_path: Path) -> None:
    ds = load_dataset("folder", dataset_root)
    work = tmp_path / "work"
    key = store._work_key(ds.videos, F, SIZE, None, 3)
    assert key != store._work_key(ds.videos, F + 1, SIZE, None, 3)
    assert key != store._work_key(ds.videos, F, SIZE + 1, None, 3)
    # a stale part from another configuration is left alone, not read
    stale = work / "0123456789abcdef" / "part-00000.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"junk")
    m = run(ds.videos.iloc[:2], tmp_path / "out", work, workers=1)
    assert m["done"] == 1 and m["resumed"] == 0 and stale.exists()


def test_work_dir_is_required(dataset_root: Path, tmp_path: Path) -> None:
    ds = load_dataset("folder", dataset_root)
    with pytest.raises(TypeError, match="work_dir"):
        extract_frames(ds.videos, tmp_path / "out", F, SIZE, progress=False)  # type: ignore[call-arg]


def test_one_row_group_per_video_with_statistics(dataset_root: Path, tmp_path: Path) -> None:
    """The layout the filtered read relies on: every row group holds one video, with min/max on video_id
    (videos cut by a shard boundary: one row group in each shard), and no statistics on the images."""
    ds = load_dataset("folder", dataset_root)
    out = tmp_path / "frames"
    run(ds.videos, out, tmp_path / "work")
    groups = []
    for shard in sorted(out.glob("shard-*.parquet")):
        meta = pq.ParquetFile(shard).metadata
        assert pq.read_schema(shard).metadata[b"discovla.frames_format"] == b"2"
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(0).statistics
            assert stats.has_min_max and stats.min == stats.max
            assert meta.row_group(g).column(3).statistics is None
            groups.append((stats.min, meta.row_group(g).num_rows))
    # shard_rows=5, F=4: g0 4 | g1 1 | g1 3, g2 2 | g2 2, g3 3 | g3 1
    assert groups == [("g0", 4), ("g1", 1), ("g1", 3), ("g2", 2), ("g2", 2), ("g3", 3), ("g3", 1)]


def test_filtered_read_equals_the_full_read(dataset_root: Path, tmp_path: Path) -> None:
    ds = load_dataset("folder", dataset_root)
    out = tmp_path / "frames"
    run(ds.videos, out, tmp_path / "work")
    keys, images = read_frames(out)
    index = read_frames_index(out)
    for wanted in (["g1"], ["g3", "g0"], ["g2", "nope"], ["g0", "g1", "g2", "g3"]):
        k, im = read_frame_images(out, wanted)
        rows = keys.video_id.isin(wanted).to_numpy()
        assert k.equals(index[rows].reset_index(drop=True)), wanted
        assert k[["video_id", "frame"]].equals(keys[rows].reset_index(drop=True)), wanted
        assert np.array_equal(im, images[rows]), wanted
    k, im = read_frame_images(out, ["nope"])
    assert (
        k.empty and list(k.columns) == ["video_id", "frame", "timestamp"] and im.shape == (0, SIZE, SIZE, 3)
    )


def test_filtered_read_does_not_read_other_videos(
    dataset_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other videos' images are never read: the row groups read hold only the wanted video, and a store
    whose other images are corrupt (wrong length: undecodable) still gives the wanted video exactly."""
    ds = load_dataset("folder", dataset_root)
    out = tmp_path / "frames"
    run(ds.videos, out, tmp_path / "work")
    expected = read_frame_images(out, ["g2"])
    read: list[tuple[str, list[int]]] = []
    real = pq.ParquetFile.read_row_groups

    def spy(self: pq.ParquetFile, row_groups: list[int], *a: object, **kw: object) -> object:
        table = real(self, row_groups, *a, **kw)
        read.append((str(row_groups), sorted(set(table.column("video_id").to_pylist()))))
        return table

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    read_frame_images(out, ["g2"])
    assert [ids for _, ids in read] == [["g2"], ["g2"]]  # g2 spans shards 1 and 2, nothing else read
    monkeypatch.undo()

    for shard in sorted(out.glob("shard-*.parquet")):  # corrupt every other video's images
        pf = pq.ParquetFile(shard)
        table, schema = pf.read(), pf.schema_arrow
        image = [
            b if v == "g2" else b"junk"
            for v, b in zip(table["video_id"].to_pylist(), table["image"].to_pylist(), strict=True)
        ]
        table = table.set_column(3, "image", pa.array(image, pa.binary())).replace_schema_metadata(
            schema.metadata
        )
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        with pq.ParquetWriter(shard, table.schema, **PARQUET_OPTIONS) as w:
            offset = 0
            for n in sizes:
                w.write_table(table.slice(offset, n), row_group_size=n)
                offset += n
    with pytest.raises(FramesStoreError, match="is not 16x16 RGB"):
        read_frames(out)
    k, im = read_frame_images(out, ["g2"])
    assert k.equals(expected[0]) and np.array_equal(im, expected[1])


def test_frame_cells_round_trip_and_old_stores_are_refused(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    cells = encode_frames(frames)
    assert [len(c) for c in cells] == [8 * 8 * 3] * 3
    assert np.array_equal(decode_frames(pa.array(cells, pa.binary()), 8), frames)
    with pytest.raises(ValueError, match="uint8"):
        encode_frames(frames.astype(np.int16))
    old = tmp_path / "old"  # a format-1 store (PNG cells, no format metadata)
    old.mkdir()
    pq.write_table(
        pa.table({"video_id": ["v"], "frame": [0], "timestamp": [0.0], "image": [b"\x89PNG"]}),
        old / "shard-00000.parquet",
    )
    for read in (read_frames, read_frames_index, lambda d: read_frame_images(d, ["v"])):
        with pytest.raises(
            FramesStoreError, match="format 1, this code reads format 2.*re-run the frames stage"
        ):
            read(old)


def test_the_reader_imports_no_sampling_code() -> None:
    """Readers of the store (captions, features, training, the report) do not depend on the sampler:
    editing it cannot change their code closure (or training's checkpoint key)."""
    code = (
        "import sys, discovla.artifacts.frames\n"
        "names = ('discovla.sampling', 'discovla.timeline', 'discovla.ffmpeg', 'discovla.extraction', 'av')\n"
        "bad = [m for m in names if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""
