"""Using what was trained: the Retriever API, `discovla index` and `search`, the index stage, README."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_features
from helpers.search import FRAMES, make_clip, train_adapters, write_features
from typer.testing import CliRunner

from discovla.artifacts.index import read_index, write_index
from discovla.cli import app
from discovla.retriever import FramesError, Retriever
from discovla.sampling import VideoError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny trained adapters, their training features, four real clips and one broken file."""
    root = tmp_path_factory.mktemp("search")
    features = synthetic_features(n_train=16, n_test=6, frames=FRAMES, size=32)
    adapters = train_adapters(root, features)
    clips = root / "clips"
    for name in ("red", "blue", "bars", "pattern"):
        make_clip(clips / f"{name}.mp4", name)
    (clips / "broken.mp4").write_bytes(b"this is not a video" * 10)
    (clips / "notes.txt").write_text("not a video either, and ignored: no video extension")
    return {"root": root, "features": features, "adapters": adapters, "clips": clips}


def _cli(*args: str):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    return res


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "video", "id", "score", "path"]
    return [line.split() for line in lines[1:]]


# -------------------------------------------------------------------------------------------- the API


def test_retriever_embeds_like_the_trained_model(setup: dict) -> None:
    from discovla.artifacts.adapters import load_adapters
    from discovla.backbone import load_backbone
    from discovla.evaluate import embed_split
    from discovla.io import read_json

    r = Retriever.load(setup["adapters"], device="cpu")
    feats = setup["features"]
    cfg = read_json(setup["adapters"] / "config.json")
    clip = load_backbone("tiny-clip", cfg["pretrained"], context_length=32).model
    model = load_adapters(setup["adapters"], clip)
    # videos: exactly the evaluate stage's embedding of the test split (whose cache has the backbone's
    # mean/std, as the features stage writes them)
    bb = load_backbone("tiny-clip", cfg["pretrained"], context_length=32)
    feats = replace(feats, meta={**feats.meta, "mean": list(bb.mean), "std": list(bb.std)})
    _, want = embed_split(model, feats, "test", 64, "cpu")
    test = torch.from_numpy(feats.split_videos("test"))
    got = r.encode_videos(feats.pixels[test])  # [N, F, 3, S, S]
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(r.encode_videos(feats.pixels[test].permute(0, 1, 3, 4, 2)), want, atol=1e-6)
    # texts: the trained text encoder on the backbone's tokens, normalised
    texts = ["a red circle slides to the left", "a blue square"]
    tokens = bb.tokenize(texts)
    with torch.no_grad():
        want_t = F.normalize(model.encode_text(tokens), dim=-1)
    assert torch.allclose(r.encode_texts(texts), want_t, atol=1e-6)
    assert r.encode_texts(texts).shape == (2, r.embed_dim) and r.num_frames == FRAMES


def test_zeroshot_is_the_frozen_clip(setup: dict) -> None:
    from discovla.backbone import load_backbone
    from discovla.io import read_json

    r = Retriever.load(setup["adapters"], device="cpu", zeroshot=True)
    pretrained = read_json(setup["adapters"] / "config.json")["pretrained"]
    frozen = load_backbone("tiny-clip", pretrained, context_length=32)
    pix = setup["features"].pixels[:3]
    frames = frozen.encode_images(pix.flatten(0, 1)).view(3, FRAMES, -1)
    want = F.normalize(F.normalize(frames, dim=-1).mean(1), dim=-1)  # evaluate.zeroshot's video
    assert torch.allclose(r.encode_videos(pix), want, atol=1e-6)
    assert torch.allclose(r.encode_texts(["a red circle"]), frozen.encode_texts(["a red circle"]), atol=1e-6)
    trained = Retriever.load(setup["adapters"], device="cpu")
    assert not torch.allclose(trained.encode_videos(pix), want, atol=1e-4)  # the adapters do something


def test_a_path_and_its_frames_embed_alike(setup: dict) -> None:
    r = Retriever.load(setup["adapters"], device="cpu")
    path = setup["clips"] / "pattern.mp4"
    frames = r.sample(path)
    assert frames.shape == (FRAMES, 32, 32, 3)
    by_path = r.encode_videos([path, str(setup["clips"] / "red.mp4")])
    by_frames = r.encode_videos(frames[None])
    assert torch.allclose(by_path[:1], by_frames, atol=1e-6)
    assert torch.allclose(by_path.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="frames per video"):
        r.encode_videos(frames[None, :2])


# -------------------------------------------------------------------------------------------- the CLI


def test_index_skips_broken_videos_and_embeds_only_new_ones(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips = tmp_path / "clips"
    shutil.copytree(setup["clips"], clips)
    out = tmp_path / "my-index"
    sampled: list[str] = []
    real_sample = Retriever.sample
    monkeypatch.setattr(
        Retriever, "sample", lambda self, p: sampled.append(Path(p).name) or real_sample(self, p)
    )

    res = _cli(
        "index", clips, "--out", out, "--adapters", setup["adapters"], "--batch-size", "2", "--workers", "2"
    )
    assert "indexed 4 videos" in res.stdout and "embedded 4 new, reused 0" in res.stdout
    assert "skipped 1 video(s)" in res.stdout and "broken.mp4: not a video" in res.stdout
    first = read_index(out)
    assert first.video_ids == ["bars", "blue", "pattern", "red"]
    assert first.paths == [str((clips / f"{v}.mp4").resolve()) for v in first.video_ids]
    assert first.skipped.path.tolist() == [str((clips / "broken.mp4").resolve())]
    assert first.skipped.reason.iloc[0].startswith("not a video")
    assert (out / "skipped.csv").read_text().startswith("path,size,mtime_ns,reason\n")
    assert sorted(sampled) == ["bars.mp4", "blue.mp4", "broken.mp4", "pattern.mp4", "red.mp4"]
    # the index holds what the API computes for the same files
    r = Retriever.load(setup["adapters"], device="cpu")
    assert torch.allclose(first.embeddings, r.encode_videos(first.paths), atol=1e-6)

    sampled.clear()
    make_clip(clips / "more" / "fractal.mp4", "fractal")
    res = _cli("index", clips, "--out", out, "--adapters", setup["adapters"])
    assert sampled == ["fractal.mp4"]  # neither the embedded videos nor the unchanged broken file again
    assert "indexed 5 videos" in res.stdout and "embedded 1 new, reused 4" in res.stdout
    assert "skipped 1 video(s)" in res.stdout
    second = read_index(out)
    assert second.video_ids == ["bars", "blue", "more/fractal", "pattern", "red"]
    keep = [second.video_ids.index(v) for v in first.video_ids]
    assert torch.equal(second.embeddings[keep], first.embeddings)  # reused bit for bit

    # another model (zero-shot) re-embeds everything instead of mixing embeddings
    sampled.clear()
    res = _cli("index", clips, "--out", out, "--adapters", setup["adapters"], "--zeroshot")
    assert "embedded 5 new, reused 0" in res.stdout and len(sampled) == 6
    assert "computed with DiscoVLA" in res.stderr


def test_a_timed_out_video_is_tried_again_on_the_next_run(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("red", "blue"):
        shutil.copy(setup["clips"] / f"{name}.mp4", clips / f"{name}.mp4")
    out = tmp_path / "idx"
    real_sample = Retriever.sample

    def slow_red(self, path):  # noqa: ANN001, ANN202
        if Path(path).name == "red.mp4":
            raise VideoError("ffmpeg timed out")
        return real_sample(self, path)

    monkeypatch.setattr(Retriever, "sample", slow_red)
    res = _cli("index", clips, "--out", out, "--adapters", setup["adapters"])
    assert "indexed 1 videos" in res.stdout and "red.mp4: ffmpeg timed out" in res.stdout
    monkeypatch.setattr(Retriever, "sample", real_sample)
    res = _cli("index", clips, "--out", out, "--adapters", setup["adapters"])
    assert "embedded 1 new, reused 1" in res.stdout and "skipped" not in res.stdout
    assert read_index(out).video_ids == ["blue", "red"] and read_index(out).skipped.empty


def test_an_interrupted_index_still_gets_its_approximate_index(setup: dict, tmp_path: Path) -> None:
    from discovla.ann import AnnParams
    from discovla.indexing import ANN_PENDING, index_folder

    r = Retriever.load(setup["adapters"], device="cpu")
    out, calls = tmp_path / "idx", []
    real_embed = r.embed_pixels

    def killed_on_the_third_batch(pixels):  # noqa: ANN001, ANN202
        calls.append(len(pixels))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_embed(pixels)

    r.embed_pixels = killed_on_the_third_batch
    with pytest.raises(KeyboardInterrupt):
        index_folder(r, setup["clips"], out, batch_size=1, save_every=1e-9, progress=False, ann="hnsw")
    saved = read_index(out)  # the mid-run save: two videos, exact search, the approximate index pending
    assert len(saved) == 2 and saved.ann is None and saved.meta[ANN_PENDING]["kind"] == "hnsw"
    r.embed_pixels = real_embed
    report = index_folder(r, setup["clips"], out, batch_size=2, progress=False)  # no --ann: as asked before
    final = read_index(out)
    assert report.reused == 2 and len(final) == 4 and ANN_PENDING not in final.meta
    assert final.ann is not None and final.ann.params.kind == "hnsw"
    assert final.ann.requested == AnnParams("hnsw")


def test_index_refuses_to_overwrite_a_folder_that_is_not_an_index(setup: dict, tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("keep me")
    res = CliRunner().invoke(
        app,
        [
            "index",
            str(setup["clips"]),
            "--out",
            str(tmp_path / "precious"),
            "--adapters",
            str(setup["adapters"]),
        ],
    )
    assert res.exit_code == 2 and "is not a video index" in res.stderr
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "keep me"


@pytest.fixture(scope="module")
def clip_index(setup: dict) -> Path:
    out = setup["root"] / "clip-index"
    _cli("index", setup["clips"], "--out", out, "--adapters", setup["adapters"])
    return out


def test_search_prints_the_k_best_videos(setup: dict, clip_index: Path) -> None:
    query = "a red circle slides to the left"
    res = _cli("search", query, "--k", "3", "--index", clip_index, "--adapters", setup["adapters"])
    rows = _table(res.stdout)
    index = read_index(clip_index)
    assert [r[0] for r in rows] == ["1", "2", "3"]
    scores = [float(r[2]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(r[1] in index.video_ids and r[3] == index.paths[index.video_ids.index(r[1])] for r in rows)
    # the same ranking as a full sort of every score
    r = Retriever.load(setup["adapters"], device="cpu")
    full = (index.embeddings @ r.encode_texts([query])[0]).tolist()
    best = sorted(range(len(full)), key=lambda i: (-full[i], i))[:3]
    assert [row[1] for row in rows] == [index.video_ids[i] for i in best]
    assert scores == [round(full[i], 4) for i in best]
    # k larger than the index: every video once
    res = _cli("search", query, "--k", "50", "--index", clip_index, "--adapters", setup["adapters"])
    assert len(_table(res.stdout)) == len(index)


@pytest.mark.parametrize("zeroshot", [False, True])
def test_a_video_finds_itself_first(setup: dict, clip_index: Path, tmp_path: Path, zeroshot: bool) -> None:
    r = Retriever.load(setup["adapters"], device="cpu", zeroshot=zeroshot)
    index = clip_index
    if zeroshot:
        index = tmp_path / "zs"
        _cli("index", setup["clips"], "--out", index, "--adapters", setup["adapters"], "--zeroshot")
    names = ["red", "blue", "bars", "pattern"]
    queries = r.encode_videos([setup["clips"] / f"{n}.mp4" for n in names])
    for name, hits in zip(names, r.search_embeddings(queries, k=2, index=index), strict=True):
        assert hits[0].video_id == name and hits[0].rank == 1
        assert hits[0].score == pytest.approx(1.0, abs=1e-5) and hits[1].score < hits[0].score


def test_search_refuses_an_index_of_another_model(setup: dict, clip_index: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        [
            "search",
            "a red circle",
            "--index",
            str(clip_index),
            "--adapters",
            str(setup["adapters"]),
            "--zeroshot",
        ],
    )
    assert res.exit_code == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"error: {clip_index} was computed with another model: DiscoVLA")
    # adapters with one changed byte are another model too
    other = tmp_path / "adapters"
    shutil.copytree(setup["adapters"], other)
    (other / "config.json").write_text((other / "config.json").read_text() + "\n")
    with pytest.raises(Exception, match="computed with another model"):
        Retriever.load(other, device="cpu").search("a red circle", index=clip_index)


def test_a_zeroshot_index_is_tied_to_the_frozen_weights(setup: dict, tmp_path: Path) -> None:
    from discovla.clip_factory import HF_SAFE_WEIGHTS, save_clip

    zs = tmp_path / "zs"
    _cli("index", setup["clips"], "--out", zs, "--adapters", setup["adapters"], "--zeroshot")
    # adapters without their card (which would refuse other base weights itself), on other frozen weights
    bare = tmp_path / "bare"
    shutil.copytree(setup["adapters"], bare, ignore=shutil.ignore_patterns("README.md"))
    r = Retriever.load(bare, device="cpu", zeroshot=True)
    assert r.search("a red circle", index=zs, k=1)  # the same base: the same zero-shot model
    clip = r.backbone.model
    with torch.no_grad():
        clip.text_projection.add_(0.01)
    save_clip(clip, "tiny-clip", tmp_path / "other-clip", {})
    other = Retriever.load(
        bare, device="cpu", zeroshot=True, pretrained=str(tmp_path / "other-clip" / HF_SAFE_WEIGHTS)
    )
    with pytest.raises(Exception, match="computed with another model: zero-shot CLIP"):
        other.search("a red circle", index=zs)


# --------------------------------------------------------------------- the default index and its stage


def test_search_without_index_embeds_the_test_split_once(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feats = setup["features"]
    write_features(feats, tmp_path / "data" / "features")
    shutil.copytree(setup["adapters"], tmp_path / "models" / "discovla")
    ds = tmp_path / "ds"  # the dataset of params.yaml: search shows the test videos' files
    test_ids = [feats.video_ids[i] for i in feats.split_videos("test")]
    make_clip(ds / "videos" / f"{test_ids[0]}.mp4", "red")
    (ds / "captions.csv").write_text("video_id,caption,split\n" + f"{test_ids[0]},a red clip,test\n")
    (tmp_path / "params.yaml").write_text(f"data: {{dataset: folder, root: {ds}}}\n")
    monkeypatch.chdir(tmp_path)

    res = _cli("search", "a red circle", "--k", "4")
    assert "indexed the test split into data/index/test (data/index/test does not exist yet)" in res.stderr
    rows = _table(res.stdout)
    assert len(rows) == 4 and {r[1] for r in rows} <= set(test_ids)
    index = read_index("data/index/test")
    assert index.video_ids == test_ids and index.meta["source"]["split"] == "test"
    assert index.paths[0] == str(ds / "videos" / f"{test_ids[0]}.mp4") and index.paths[1:] == [""] * 5
    r = Retriever.load("models/discovla", device="cpu")
    want = r.encode_videos(feats.pixels[torch.from_numpy(feats.split_videos("test"))])
    assert torch.allclose(index.embeddings, want, atol=1e-6)

    again = _cli("search", "a red circle", "--k", "4")
    assert again.stderr == "" and again.stdout == res.stdout  # reused, not rebuilt
    zs = _cli("search", "a red circle", "--k", "2", "--zeroshot")  # its own default index
    assert "into data/index/test-zeroshot" in zs.stderr and read_index("data/index/test").meta == index.meta


def test_search_on_a_cache_of_other_frames_says_so_in_one_line(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_features(synthetic_features(frames=FRAMES + 2), tmp_path / "data" / "features")
    shutil.copytree(setup["adapters"], tmp_path / "models" / "discovla")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["search", "a red circle"])
    assert res.exit_code == 2 and res.exception is not None and not res.stdout
    assert res.stderr.splitlines() == [
        f"error: the feature cache data/features has {FRAMES + 2} frames per video, the adapters were "
        f"trained on {FRAMES}: rebuild it with frames.num_frames: {FRAMES} (dvc repro) or pass the adapters "
        "trained on it (--adapters)"
    ]
    with pytest.raises(FramesError, match=f"{FRAMES + 2} frames per video"):
        Retriever.load("models/discovla", device="cpu").encode_videos(
            np.zeros((1, FRAMES + 2, 32, 32, 3), np.uint8)
        )


def test_index_stage_writes_the_default_index(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feats = setup["features"]
    write_features(feats, tmp_path / "features")
    (tmp_path / "params.yaml").write_text(f"data: {{dataset: folder, root: {tmp_path / 'none'}}}\n")
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("index_stage", REPO / "stages" / "index.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main(features=tmp_path / "features", adapters=setup["adapters"], out=tmp_path / "idx", split="test")
    index = read_index(tmp_path / "idx")
    assert len(index) == 6 and index.paths == [""] * 6  # no dataset here: no paths
    # and the CLI takes it as its default index without rebuilding
    from discovla.split_indexing import ensure_split_index

    _, why = ensure_split_index(
        Retriever.load(setup["adapters"], device="cpu"), tmp_path / "features", tmp_path / "idx"
    )
    assert why == ""
    write_index(tmp_path / "idx", index)  # rewritten, same content: still reused
    assert (
        ensure_split_index(Retriever.load(setup["adapters"]), tmp_path / "features", tmp_path / "idx")[1]
        == ""
    )


# ------------------------------------------------------------------------------------------ README


def test_readme_example_runs(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Search your videos", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    commands = [
        line.split("#")[0].split() for line in section.splitlines() if line.startswith("    discovla ")
    ]
    assert commands[0][:2] == ["discovla", "index"] and commands[1][:2] == ["discovla", "search"]
    shutil.copytree(setup["adapters"], tmp_path / "models" / "discovla")
    make_clip(tmp_path / "clips" / "a.mp4", "red")
    make_clip(tmp_path / "clips" / "b.mp4", "blue")
    make_clip(tmp_path / "clips" / "c.mp4", "bars")
    monkeypatch.chdir(tmp_path)
    # the README's own commands, on the clips folder
    _cli(*[a.replace("path/to/videos", "clips") for a in commands[0][1:]])
    (search,) = [
        ln for ln in section.splitlines() if ln.startswith("    discovla search") and "--index" in ln
    ]
    res = _cli(*shlex.split(search.split("  #")[0])[1:])
    assert len(_table(res.stdout)) == 3  # 3 videos, --k 5
    capsys.readouterr()
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in printed[:3]] == ["1", "2", "3"]
    assert {line.split()[1] for line in printed[:3]} == {"a", "b", "c"}


def test_the_package_exports_the_retriever_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, discovla.config\n"
        "assert 'discovla.retriever' not in sys.modules\n"
        "from discovla import Retriever\n"
        "from discovla.retriever import Retriever as R\n"
        "assert Retriever is R\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
