"""The feature cache on disk: streamed build, per-video pixel reads, lazy embeddings, and the loader that
trains from it (any number of workers gives the very same batches and adapters)."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers.stores import write_frames_store

from discovla.artifacts import manifest as manifest_mod
from discovla.artifacts.captions import write_captions
from discovla.artifacts.features import FeaturesError, cache_digest, load_features, save_features
from discovla.artifacts.frames import read_frames
from discovla.artifacts.manifest import MANIFEST, write_manifest
from discovla.artifacts.pixels import PIXELS_FILE, VideoPixels
from discovla.backbone import load_backbone
from discovla.featurize import build_features
from discovla.loader import TrainBatches, VideoBatches, make_loader
from discovla.model import DiscoVLAConfig
from discovla.provenance import files_digest
from discovla.train import TrainConfig, epoch_plan, train

F, SIZE = 4, 32
IDS = ["vb", "va", "vd", "vc", "ve"]  # store order differs from the cache's sorted order
SPLITS = ["train", "train", "test", "train", "test"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("features")
    write_frames_store(root / "frames", IDS, SPLITS, F, SIZE)
    pseudo = pd.DataFrame([(v, f, f"frame {f} of {v}") for v in IDS for f in range(F)])
    pseudo.columns = ["video_id", "frame", "caption"]
    write_captions(root / "captions.parquet", pseudo)
    caps = pd.DataFrame({"video_id": IDS, "caption": [f"video {v}" for v in IDS], "split": SPLITS})
    caps.insert(0, "caption_id", range(len(caps)))
    torch.manual_seed(0)
    backbone = load_backbone("tiny-clip", None, context_length=32)
    out = {}
    for batch in (3, 256):  # 3 frames a batch: videos straddle batch boundaries
        build_features(backbone, root / "frames", root / "captions.parquet", caps, root / f"b{batch}", batch)
        out[batch] = root / f"b{batch}"
    keys, images = read_frames(root / "frames")
    out["images"] = {(v, int(f)): im for v, f, im in zip(keys.video_id, keys.frame, images, strict=True)}
    out["backbone"] = backbone
    return out


def test_build_streams_every_frame_into_its_video(built: dict) -> None:
    for batch in (3, 256):
        feats = load_features(built[batch])
        assert feats.video_ids == sorted(IDS) and feats.pixels.shape == (5, F, 3, SIZE, SIZE)
        for i, v in enumerate(feats.video_ids):
            want = np.stack([built["images"][(v, f)] for f in range(F)]).transpose(0, 3, 1, 2)
            assert np.array_equal(feats.pixels[i].numpy(), want)
    a, b = load_features(built[3]), load_features(built[256])
    assert torch.allclose(a.frame_emb, b.frame_emb, atol=1e-6)  # embedded in other batches, same result
    direct = built["backbone"].encode_images(a.pixels[[0]].flatten(0, 1), 8)
    assert torch.allclose(a.frame_emb[0], direct, atol=1e-5)


def test_pixels_file_opens_in_pandas_and_pyarrow(built: dict) -> None:
    table = pd.read_feather(built[256] / PIXELS_FILE)
    assert len(table) == len(IDS) * F and list(table.columns) == ["video_id", "frame", "pixels"]
    reader = pa.ipc.open_file(built[256] / PIXELS_FILE)
    assert reader.num_record_batches == len(IDS)  # one batch per video: random access by video
    assert reader.get_batch(0).column("video_id").to_pylist() == [IDS[0]] * F


def test_video_pixels_indexing_and_pickling(built: dict) -> None:
    px = load_features(built[256]).pixels
    assert isinstance(px, VideoPixels)
    whole = px[np.arange(len(px))]
    assert torch.equal(px[-1], whole[4]) and torch.equal(px[1:3], whole[1:3])
    assert torch.equal(px[torch.tensor([3, 0, 3])], whole[[3, 0, 3]])
    px[0]  # opens a handle; the pickle must not carry it
    clone = pickle.loads(pickle.dumps(px))
    assert clone._reader is None and torch.equal(clone[2], whole[2])


def test_embeddings_load_on_first_use(built: dict) -> None:
    feats = load_features(built[256])
    assert "_frame_emb" not in feats.__dict__ or feats.__dict__["_frame_emb"] is None
    emb = feats.frame_emb
    assert emb.shape == (5, F, built["backbone"].embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(5, F), atol=1e-5)
    assert feats.cap_emb.shape[0] == len(IDS) and feats.pseudo_emb.shape == emb.shape


def test_a_damaged_cache_is_refused(built: dict, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "cache"
    shutil.copytree(built[256], bad)
    (bad / PIXELS_FILE).unlink()
    with pytest.raises(FeaturesError, match="rerun the features stage"):
        load_features(bad)
    shutil.copyfile(built[256] / PIXELS_FILE, bad / PIXELS_FILE)
    meta = pq.read_table(bad / "frames.parquet")
    pq.write_table(meta.slice(0, len(meta) - F), bad / "frames.parquet")  # one video fewer
    with pytest.raises(FeaturesError, match="rerun the features stage"):
        load_features(bad)


def test_save_features_round_trip(features, tmp_path: Path) -> None:
    back = load_features(save_features(features, tmp_path / "c"))
    order = [features.video_ids.index(v) for v in back.video_ids]
    assert torch.equal(back.pixels[np.arange(len(order))], features.pixels[order])
    assert torch.equal(back.pseudo_tokens, features.pseudo_tokens[order])
    assert torch.equal(back.frame_emb, features.frame_emb[order])
    assert torch.equal(back.cap_tokens, features.cap_tokens) and torch.equal(back.cap_emb, features.cap_emb)


def test_loader_workers_give_the_same_batches(features, tmp_path: Path) -> None:
    disk = load_features(save_features(features, tmp_path / "c"))
    vids = disk.split_videos("train")
    order, chosen = epoch_plan(disk, vids, 3, 1)
    plan = TrainBatches(
        disk.pixels, disk.cap_tokens, disk.pseudo_tokens, order, chosen, 4, "randaugment", 3, 1
    )
    direct = [plan[i] for i in range(len(plan))]
    loaded = list(make_loader(plan, workers=2))
    assert len(loaded) == len(direct) == len(order) // 4
    for a, b in zip(direct, loaded, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("pixels", "tokens", "pseudo"))
    ranks = [
        TrainBatches(disk.pixels, disk.cap_tokens, None, order, chosen, 4, rank=r, world=2) for r in (0, 1)
    ]
    halves = torch.cat([ranks[0][1]["tokens"], ranks[1][1]["tokens"]])
    assert torch.equal(halves, direct[1]["tokens"]) and "pseudo" not in ranks[0][1]
    evals = list(make_loader(VideoBatches(disk.pixels, vids, 3), workers=1))
    assert torch.equal(torch.cat(evals), disk.pixels[vids])


def test_training_from_disk_with_workers_matches_memory(features, tiny_clip_factory, tmp_path: Path) -> None:
    disk = load_features(save_features(features, tmp_path / "c"))
    cfg = TrainConfig(
        epochs=1,
        batch_size=4,
        lr=1e-3,
        warmup=0.2,
        device="cpu",
        model=DiscoVLAConfig(lora_rank=2, vision_layers=1, text_layers=1, adapter_dim=4, num_frames=4),
    )
    runs = {}
    for name, feats, c in (
        ("memory", features, cfg),
        ("disk", disk, cfg),
        ("workers", disk, replace(cfg, workers=2)),
    ):
        model, record = train(tiny_clip_factory(), feats, c, tmp_path / name, progress=False)
        runs[name] = (model.adapter_state_dict(), record)
    mem, _ = runs["memory"]
    for name in ("disk", "workers"):
        state, record = runs[name]
        assert all(torch.equal(state[k], mem[k]) for k in mem), name
        assert 0.0 <= record["epochs"][0]["data_wait"] < 1.0
    assert runs["disk"][1]["checkpoint_key"] == runs["workers"][1]["checkpoint_key"]  # workers: not in key


def _count_hashes(monkeypatch) -> list[str]:
    """Names of the files the manifest check hashes from now on."""
    hashed: list[str] = []
    real = manifest_mod.file_sha256

    def counting(path):  # noqa: ANN001, ANN202
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(manifest_mod, "file_sha256", counting)
    return hashed


def test_loading_checks_the_manifest_without_reading_the_cache(features, tmp_path: Path, monkeypatch) -> None:
    cache = save_features(features, tmp_path / "c")
    files = [f for f in cache.iterdir() if f.name != MANIFEST]
    digest = load_features(cache).fingerprint()
    assert digest == files_digest(files, root=cache)  # the content digest, recorded when written
    hashed = _count_hashes(monkeypatch)
    assert load_features(cache).fingerprint() == digest and hashed == []  # sizes and times only
    assert load_features(cache, verify=True).fingerprint() == digest
    assert sorted(hashed) == sorted(f.name for f in files)  # verify: every file, whatever the times

    # a copy (as `dvc checkout` makes) has new times: hashed once, remembered beside the cache, then cheap
    hashed.clear()
    for f in files:
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert cache_digest(cache) == digest and sorted(hashed) == sorted(f.name for f in files)
    assert (tmp_path / ".c.verified.json").is_file() and MANIFEST in {f.name for f in cache.iterdir()}
    hashed.clear()
    assert cache_digest(cache) == digest and hashed == []


def test_a_changed_byte_is_caught_by_time_or_by_verify(features, tmp_path: Path) -> None:
    cache = save_features(features, tmp_path / "c")
    pixels = cache / PIXELS_FILE
    st = pixels.stat()
    raw = bytearray(pixels.read_bytes())
    raw[-100] ^= 1
    pixels.write_bytes(bytes(raw))
    os.utime(pixels, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same time: the cheap check trusts it
    assert cache_digest(cache)
    with pytest.raises(FeaturesError, match=f"{PIXELS_FILE} differs from its manifest"):
        load_features(cache, verify=True)
    os.utime(pixels)  # any other time: hashed, and refused
    with pytest.raises(FeaturesError, match=f"{PIXELS_FILE} differs from its manifest"):
        load_features(cache)
    (cache / PIXELS_FILE).write_bytes(bytes(raw[:-1]))
    with pytest.raises(FeaturesError, match="bytes, its manifest"):
        load_features(cache)


def test_missing_foreign_and_manifestless_caches_are_refused(features, tmp_path: Path) -> None:
    cache = save_features(features, tmp_path / "c")
    (cache / "notes.txt").write_text("mine")
    with pytest.raises(FeaturesError, match="notes.txt is not in manifest.json"):
        load_features(cache)
    (cache / "notes.txt").unlink()
    (cache / "twins.csv").unlink()
    with pytest.raises(FeaturesError, match="twins.csv is missing"):
        load_features(cache)
    (cache / MANIFEST).unlink()
    with pytest.raises(FeaturesError, match="manifest.json not found.*rerun the features stage"):
        load_features(cache)


def test_a_video_split_over_two_runs_of_rows_is_refused(features, tmp_path: Path) -> None:
    cache = save_features(features, tmp_path / "c")
    table = pq.read_table(cache / "frames.parquet")
    rows = np.arange(table.num_rows)
    rows[[F - 1, F]] = rows[[F, F - 1]]  # the first video's last frame after the second video's first
    pq.write_table(table.take(rows), cache / "frames.parquet")
    write_manifest(cache)  # consistent bytes: only the layout check can see it
    with pytest.raises(FeaturesError, match="frames are not consecutive"):
        load_features(cache)


def test_video_pixels_index_like_a_tensor(features, tmp_path: Path) -> None:
    disk = load_features(save_features(features, tmp_path / "c")).pixels
    dense = disk[np.arange(len(disk))]
    mask = np.zeros(len(disk), bool)
    mask[[1, 3]] = True
    assert torch.equal(disk[mask], dense[[1, 3]]) and torch.equal(disk[torch.from_numpy(mask)], dense[[1, 3]])
    assert torch.equal(disk[-1], dense[-1]) and torch.equal(disk[np.int64(2)], dense[2])
    assert torch.equal(disk[1:4:2], dense[1:4:2]) and torch.equal(disk[[-1, 0]], dense[[-1, 0]])
    with pytest.raises(IndexError):
        disk[np.ones(len(disk) + 1, bool)]
    with pytest.raises(IndexError):
        disk[[len(disk)]]


def test_verify_command_hashes_every_file(features, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from discovla.cli import app

    cache = save_features(features, tmp_path / "c")
    ok = CliRunner().invoke(app, ["verify", str(cache)])
    assert ok.exit_code == 0 and f"content digest {cache_digest(cache)[:16]}" in ok.stdout
    pixels = cache / PIXELS_FILE
    st = pixels.stat()
    raw = bytearray(pixels.read_bytes())
    raw[0] ^= 1
    pixels.write_bytes(bytes(raw))
    os.utime(pixels, ns=(st.st_atime_ns, st.st_mtime_ns))  # a load would not notice; verify does
    bad = CliRunner().invoke(app, ["verify", str(cache)])
    assert bad.exit_code == 2 and bad.stderr.startswith(
        f"error: {cache}/{PIXELS_FILE} differs from its manifest"
    )
