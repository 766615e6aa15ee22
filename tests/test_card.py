"""Adapters a colleague can load: the model card the train stage writes, and adapters shared alone."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_features, tiny_train_config

from discovla.artifacts.card import CARD_FILE, CardError, card_metadata, read_card, write_card
from discovla.retriever import ADAPTER_FILES, AdaptersError, Retriever

CTX = 32
WEIGHTS = "models/tiny-clip/open_clip_model.safetensors"  # recorded relative, as params.yaml has it


def _save_clip(root: Path, seed: int) -> Path:
    from discovla.backbone import load_backbone
    from discovla.clip_factory import HF_SAFE_WEIGHTS, save_clip

    torch.manual_seed(seed)
    save_clip(load_backbone("tiny-clip", None, context_length=CTX).model, "tiny-clip", root, {})
    return root / HF_SAFE_WEIGHTS


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A repository-like layout: models/tiny-clip (the base) and models/discovla (adapters + card), the
    adapters trained for one epoch on synthetic features, their config recording the base by a relative
    path as the train stage does."""
    from discovla.artifacts.adapters import save_adapters
    from discovla.backbone import load_backbone
    from discovla.provenance import tensors_digest
    from discovla.train import train

    repo = tmp_path_factory.mktemp("repo")
    ckpt = _save_clip(repo / "models" / "tiny-clip", seed=0)
    features = synthetic_features(n_train=16, n_test=6, frames=4, size=32)
    clip = load_backbone("tiny-clip", str(ckpt), context_length=CTX).model
    digest = tensors_digest(sorted(clip.state_dict().items()))
    cfg = replace(tiny_train_config(), epochs=1)
    model, record = train(clip, features, cfg, repo / ".work" / "checkpoints", progress=False)
    out = repo / "models" / "discovla"
    save_adapters(out, model, {"backbone": "tiny-clip", "pretrained": WEIGHTS, "context_length": CTX})
    meta = card_metadata(
        backbone="tiny-clip",
        pretrained=WEIGHTS,
        base_weights_sha256=digest,
        context_length=CTX,
        dataset="shapes",
        params={"lora": {"rank": 4}, "train": {"epochs": 1}},
        metrics={"val_t2v_R@1": 12.5, "val_v2t_R@1": 25.0, "loss": 3.2},
        checkpoint_key=record["checkpoint_key"],
        trainable_parameters=record["trainable_parameters"],
    )
    write_card(out, meta)
    return {"repo": repo, "adapters": out, "ckpt": ckpt, "features": features, "meta": meta}


def _test_ranks(retriever: Retriever, features) -> dict[str, np.ndarray]:
    """t2v and v2t ranks of the test split: its captions' texts against its videos' frames."""
    from discovla.retrieval import retrieval_metrics

    test = features.split_videos("test")
    caps = features.split_captions("test")
    videos = retriever.encode_videos(features.pixels[torch.from_numpy(test)])
    texts = retriever.encode_texts(list(caps.caption))
    where = {v: i for i, v in enumerate(test)}
    target = [where[i] for i in caps.video_index]
    return retrieval_metrics(texts, videos, target, return_ranks=True)["ranks"]


def test_card_front_matter_is_what_hubs_read(trained: dict) -> None:
    meta = read_card(trained["adapters"])
    assert meta == trained["meta"]
    for key in ("library_name", "license", "base_model", "datasets", "metrics", "model-index", "tags"):
        assert key in meta, key
    assert meta["license"] == "other" and meta["base_model"] == "tiny-clip"  # a local file: the name only
    assert meta["datasets"] == ["discovla-shapes"]
    results = meta["model-index"][0]["results"]
    assert [(r["task"]["type"], r["metrics"][0]["value"]) for r in results] == [
        ("text-to-video-retrieval", 12.5),
        ("video-to-text-retrieval", 25.0),
    ]
    assert meta["discovla"]["params"]["lora"] == {"rank": 4}
    text = (trained["adapters"] / CARD_FILE).read_text()
    assert text.startswith("---\n") and "Retriever.load(" in text and "## License" in text


def test_card_reader_refuses_a_readme_without_front_matter(tmp_path: Path) -> None:
    assert read_card(tmp_path) is None
    (tmp_path / CARD_FILE).write_text("# just a readme\n")
    with pytest.raises(CardError, match="no YAML front matter"):
        read_card(tmp_path)


def test_adapters_copied_alone_load_with_the_base_named_and_rank_the_same(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not this repository, whose models/tiny-clip is another base
    shared = tmp_path / "from-a-colleague"
    shared.mkdir()
    for name in (*ADAPTER_FILES, CARD_FILE):
        shutil.copy2(trained["adapters"] / name, shared / name)
    assert sorted(p.name for p in shared.iterdir()) == sorted([*ADAPTER_FILES, CARD_FILE])

    # the recorded relative path is found from the original directory, not from the copy
    original = Retriever.load(trained["adapters"], device="cpu")
    with pytest.raises(AdaptersError, match="pretrained=PATH_OR_TAG"):
        Retriever.load(shared, device="cpu")

    copy = Retriever.load(shared, device="cpu", pretrained=str(trained["ckpt"]))
    assert copy.identity["adapters_digest"] == original.identity["adapters_digest"]
    want, got = _test_ranks(original, trained["features"]), _test_ranks(copy, trained["features"])
    for direction in ("t2v", "v2t"):
        assert np.array_equal(got[direction], want[direction]), direction
    zs = _test_ranks(Retriever.load(shared, device="cpu", zeroshot=True, pretrained=str(trained["ckpt"])),
                     trained["features"])  # fmt: skip
    assert not all(np.array_equal(zs[d], want[d]) for d in ("t2v", "v2t"))  # the adapters did something

    # the command line: one error line naming the option, then the same directory with the base named
    from helpers.search import make_clip
    from typer.testing import CliRunner

    from discovla.cli import app

    make_clip(tmp_path / "videos" / "red.mp4", "red")
    args = ["index", str(tmp_path / "videos"), "--out", str(tmp_path / "index"), "--adapters", str(shared)]
    res = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert res.exit_code == 2 and "--pretrained" in res.stderr, (res.stdout, res.stderr)
    res = CliRunner().invoke(app, [*args, "--device", "cpu", "--pretrained", str(trained["ckpt"])])
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    assert "indexed 1 videos" in res.stdout


def test_other_base_weights_are_refused(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    other = _save_clip(tmp_path / "other-clip", seed=1)
    with pytest.raises(AdaptersError, match="not the ones these adapters were trained on"):
        Retriever.load(trained["adapters"], device="cpu", pretrained=str(other))


def test_train_stage_writes_the_card(tmp_path: Path) -> None:
    """``stages/train.py`` (the dvc.yaml command line) on a tiny cache: the adapters directory holds the
    card, whose params are params.yaml's and whose base hash is the frozen CLIP's."""
    import os
    import subprocess

    import yaml
    from helpers.search import write_features
    from helpers.stages import stage_command

    from discovla.backbone import load_backbone
    from discovla.provenance import tensors_digest

    ckpt = _save_clip(tmp_path / "models" / "tiny-clip", seed=0)
    write_features(
        synthetic_features(n_train=16, n_test=6, frames=4, size=32), tmp_path / "data" / "features"
    )
    params = {
        "model": {"backbone": "tiny-clip", "pretrained": WEIGHTS, "context_length": CTX},
        "lora": {"rank": 4},
        "fusion": {"vision_layers": 2, "text_layers": 1, "adapter_dim": 4},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "DISCOVLA_CHECKPOINTS": "ckpt"}
    done = subprocess.run(stage_command("train"), cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    meta = read_card(tmp_path / "models" / "discovla")
    assert meta is not None and meta["datasets"] == ["discovla-shapes"]
    d = meta["discovla"]
    assert d["params"]["lora"]["rank"] == 4 and d["params"]["train"]["epochs"] == 1
    assert set(d["params"]) == {"model", "lora", "fusion", "temporal", "train"}
    train_json = yaml.safe_load((tmp_path / "metrics" / "train.json").read_text())
    assert d["checkpoint_key"] == train_json["checkpoint_key"]
    clip = load_backbone("tiny-clip", str(ckpt), context_length=CTX).model
    assert d["base_weights_sha256"] == tensors_digest(sorted(clip.state_dict().items()))
