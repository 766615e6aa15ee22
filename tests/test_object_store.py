"""Videos read in place from an object store: a folder dataset whose ``path`` column holds ``s3://`` URIs
(a local S3 server, moto) or ``file://`` URIs gives the frames store that the local files give."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_frames_store import SIZE, F, make_dataset

from discovla import locations
from discovla.data import DatasetError
from discovla.data.check import check_dataset
from discovla.data.registry import load_dataset
from discovla.extraction import extract_frames
from discovla.sampling import VideoError, sample_frames

GOOD = ["g0", "g1", "g2", "g3"]


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds"), bad=False)


@pytest.fixture(scope="module")
def s3(local_root: Path) -> Iterator[str]:
    """A local S3 server holding the good videos under ``s3://videos/clips/``; yields the URI query that
    points pyarrow at it."""
    server_mod = pytest.importorskip("moto.server", reason="moto (a local S3 server) is a dev dependency")
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(f"s3://videos/{query}&allow_bucket_creation=true")
    fs.create_dir("videos")
    for vid in GOOD:
        with fs.open_output_stream(f"videos/clips/{vid}.mp4") as f:
            f.write((local_root / "videos" / f"{vid}.mp4").read_bytes())
    try:
        yield query
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def listed_dataset(root: Path, paths: dict[str, str]) -> Path:
    """A folder dataset whose captions.csv says where each video is (no videos/ folder)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [(vid, f"a caption of {vid}", "train", path) for vid, path in paths.items()]
    pd.DataFrame(rows, columns=["video_id", "caption", "split", "path"]).to_csv(
        root / "captions.csv", index=False
    )
    return root


def frames_of(root: Path, tmp: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    videos = load_dataset("folder", root).videos
    out = tmp / f"frames-{name}"
    extract_frames(videos, out, F, SIZE, workers=2, work_dir=tmp / f"work-{name}", progress=False)
    rows = pd.concat([pq.read_table(p).to_pandas() for p in sorted(out.glob("shard-*.parquet"))])
    return rows.reset_index(drop=True), pd.read_csv(out / "skipped.csv", keep_default_na=False)


def test_videos_in_s3_give_the_frames_of_the_local_files(local_root: Path, s3: str, tmp_path: Path) -> None:
    local, _ = frames_of(local_root, tmp_path, "local")
    uris = {vid: f"s3://videos/clips/{vid}.mp4{s3}" for vid in GOOD}
    uris["gone"] = f"s3://videos/clips/gone.mp4{s3}"  # listed, not in the bucket: skipped with the reason
    remote, skipped = frames_of(listed_dataset(tmp_path / "s3ds", uris), tmp_path, "s3")
    pd.testing.assert_frame_equal(local, remote)  # the same pixels, timestamps and rows
    assert skipped.video_id.tolist() == ["gone"] and skipped.reason.tolist() == ["missing file"]
    assert skipped.path.tolist() == [uris["gone"]]  # the location is recorded as given

    report = check_dataset("folder", tmp_path / "s3ds")
    assert report["missing_videos"] == [uris["gone"]] and report["splits"]["train"]["missing_videos"] == 1


def test_file_uris_and_relative_paths(local_root: Path, tmp_path: Path) -> None:
    local, _ = frames_of(local_root, tmp_path, "local")
    shutil.copytree(local_root / "videos", tmp_path / "ds" / "clips")
    paths = {vid: f"clips/{vid}.mp4" for vid in GOOD[:2]}  # relative to the root
    paths |= {vid: (local_root / "videos" / f"{vid}.mp4").as_uri() for vid in GOOD[2:]}  # file:///...
    listed = listed_dataset(tmp_path / "ds", paths)
    assert load_dataset("folder", listed).videos.path.tolist()[:2] == [
        str(tmp_path / "ds" / "clips" / "g0.mp4"),
        str(tmp_path / "ds" / "clips" / "g1.mp4"),
    ]
    remote, skipped = frames_of(listed, tmp_path, "uri")
    pd.testing.assert_frame_equal(local, remote)
    assert skipped.empty


def test_bad_locations_are_clear(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="unreadable file: nosuch://x/y.mp4"):
        sample_frames("nosuch://x/y.mp4", F, SIZE)  # no pyarrow filesystem for that scheme
    with pytest.raises(locations.LocationError, match="nosuch://x/y.mp4"):
        locations.stat("nosuch://x/y.mp4")
    assert locations.stat(tmp_path) is None and not locations.is_uri(str(tmp_path))
    with pytest.raises(VideoError, match="missing file"):
        sample_frames((tmp_path / "none.mp4").as_uri(), F, SIZE)

    bad = listed_dataset(tmp_path / "two", {"a": "a.mp4"})
    df = pd.read_csv(bad / "captions.csv")
    pd.concat([df, df.assign(path="b.mp4")]).to_csv(bad / "captions.csv", index=False)
    with pytest.raises(DatasetError, match="video 'a' has several paths"):
        load_dataset("folder", bad)
    df.assign(path="").to_csv(bad / "captions.csv", index=False)
    with pytest.raises(DatasetError, match="row 2 has an empty path"):
        load_dataset("folder", bad)


def test_many_objects_are_listed_a_folder_at_a_time(s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """stat_many asks the store once per folder (a LIST), not once per video (a HEAD each), and says what
    stat says of every path, missing ones included."""
    uris = [f"s3://videos/clips/{v}.mp4{s3}" for v in [*GOOD, "gone"]]
    calls = []
    resolve = locations._resolve

    class Counting:
        def __init__(self, fs: object) -> None:
            self.fs = fs

        def get_file_info(self, what: object) -> object:
            calls.append(type(what).__name__)
            return self.fs.get_file_info(what)

    monkeypatch.setattr(locations, "_resolve", lambda uri: (Counting(resolve(uri)[0]), resolve(uri)[1]))
    found = locations.stat_many(uris)
    assert calls == ["FileSelector"]  # one listing for the five videos
    monkeypatch.setattr(locations, "_resolve", resolve)
    assert found == [locations.stat(u) for u in uris]
    assert found[-1] is None and all(f is not None and f[0] > 0 for f in found[:-1])
