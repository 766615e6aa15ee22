"""The report stage: one self-contained HTML page from a tiny synthetic run (frames store, feature cache,
adapters, metrics files), its tables, inline images, top-5 strips, twins, identity; the stage script; the
page in a headless Chromium when one is installed."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers.stores import write_frames_store
from PIL import Image

from discovla.artifacts.adapters import save_adapters
from discovla.artifacts.captions import write_captions
from discovla.artifacts.features import load_features
from discovla.artifacts.metrics import write_recall_curve, write_train_curve
from discovla.backbone import load_backbone
from discovla.clip_factory import save_clip
from discovla.config import params_from_dict
from discovla.evaluate import evaluate_model, zeroshot
from discovla.featurize import build_features
from discovla.io import write_json
from discovla.model import DiscoVLA, DiscoVLAConfig
from discovla.report import ReportError, build_report, load_trained_model, write_report

REPO = Path(__file__).resolve().parents[1]
F, SIZE, N_TRAIN, N_TEST, QUERIES = 4, 32, 4, 8, 3
EVIL = '<script>alert("x")</script> & a red square'
PARAMS = {"train": {"epochs": 2}, "fusion": {"beta": 0.25}}
ABLATION = {
    "seeds": [1, 2, 3],
    "epochs": 2,
    "sampling": "pairs",
    "summary": {
        "zeroshot": {"t2v_R@1": {"mean": 6.0, "std": 0.0, "n": 1}},
        "lora": {
            "t2v_R@1": {"mean": 13.27, "std": 2.14, "n": 3},
            "trainable_parameters": {"mean": 20480.0, "std": 0.0, "n": 3},
        },
    },
    "runs": {"lora": [{"epochs": [{"batch_R@1": 40.0, "video": 3.9}, {"batch_R@1": 48.0, "video": 1.7}]}]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny finished run: frames store, pseudo captions, feature cache (with twins), adapters on a saved
    tiny CLIP, and the metrics files the evaluate and train stages would write."""
    root = tmp_path_factory.mktemp("run")
    ids = [f"tr{i}" for i in range(N_TRAIN)] + [f"te{i}" for i in range(N_TEST)]
    splits = ["train"] * N_TRAIN + ["test"] * N_TEST
    write_frames_store(root / "frames", ids, splits, F, SIZE)
    pseudo = pd.DataFrame([(v, f, f"a shape in frame {f}") for v in ids for f in range(F)])
    pseudo.columns = ["video_id", "frame", "caption"]
    write_captions(root / "captions.parquet", pseudo)
    caps = pd.DataFrame(
        {"video_id": ids, "caption": [f"a square of video {v}" for v in ids], "split": splits}
    )
    caps.loc[N_TRAIN, "caption"] = EVIL
    caps.loc[N_TRAIN + 1, "caption"] = "a square rises, then a circle appears"  # states an order
    caps.insert(0, "caption_id", range(len(caps)))
    twins = pd.DataFrame(
        [
            ("te0", "te1", "order"),
            ("te1", "te0", "order"),
            ("te2", "te3", "content"),
            ("te3", "te2", "content"),
        ],
        columns=["video_id", "twin_id", "kind"],
    ).assign(split="test")
    twins.to_csv(root / "twins.csv", index=False)

    torch.manual_seed(0)
    clip = load_backbone("tiny-clip", None, context_length=32).model
    save_clip(clip, "tiny-clip", root / "clip", {})
    pretrained = str(root / "clip" / "open_clip_model.safetensors")
    backbone = load_backbone("tiny-clip", pretrained, context_length=32)
    build_features(
        backbone,
        root / "frames",
        root / "captions.parquet",
        caps,
        root / "features",
        batch_size=64,
        twins_csv=root / "twins.csv",
    )
    cfg = DiscoVLAConfig(
        lora_rank=2, fusion=True, vision_layers=1, text_layers=1, adapter_dim=4, num_frames=F
    )
    model = DiscoVLA(load_backbone("tiny-clip", pretrained, context_length=32).model, cfg)
    with torch.no_grad():  # untrained adapters are the identity: perturb them so the model is its own
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    info = {
        "backbone": "tiny-clip",
        "pretrained": pretrained,
        "context_length": 32,
        "epochs": 2,
        "trainable_parameters": model.num_trainable(),
    }
    save_adapters(root / "adapters", model, info)

    metrics = root / "metrics"
    cache = load_features(root / "features")
    zs = zeroshot(cache, "test", 1024, dsl=True)
    trained = evaluate_model(load_trained_model(root / "adapters")[0], cache, "test", 64, 1024, dsl=True)
    ranks = {"zeroshot": zs.pop("ranks"), "discovla": trained.pop("ranks")}
    write_json(metrics / "zeroshot.json", zs)
    write_json(
        metrics / "retrieval.json",
        {**trained, "zeroshot": {k: zs[k] for k in ("t2v", "v2t", "twins", "reversal")}},
    )
    write_recall_curve(metrics / "recall_at_k.csv", ranks)
    curve = [
        {
            "step": s,
            "epoch": 1 + s // 6,
            "lr": 1e-3,
            "loss": 5.0 / s,
            "video": 3.0 / s,
            "img": 0.5,
            "distill": 2.0 / s,
        }
        for s in range(1, 13)
    ]
    write_train_curve(metrics / "train_curve.csv", curve)
    epochs = [
        {"epoch": e, "loss": 2.0 / e, "video": 1.0, "img": 0.5, "distill": 1.5, "val_t2v_R@1": 12.5 * e}
        for e in (1, 2)
    ]
    write_json(
        metrics / "train.json", {"trainable_parameters": info["trainable_parameters"], "per_epoch": epochs}
    )
    write_json(
        metrics / "info" / "train.json", {"seconds": 12.5, "per_epoch": [{"seconds": 6.0}, {"seconds": 6.5}]}
    )
    write_json(metrics / "frames.json", {"videos": len(ids), "skipped": 0})
    write_json(metrics / "info" / "shapes.json", {"seed": 42, "seconds": 3.0})  # a stage with run info only
    write_json(metrics / "ablation.json", ABLATION)
    write_json(metrics / "ablation_static.json", {**ABLATION, "captions": "static"})
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    paths = {
        "metrics_dir": metrics,
        "frames_dir": root / "frames",
        "features_dir": root / "features",
        "adapters_dir": root / "adapters",
    }
    out = write_report(
        root / "reports" / "index.html",
        **paths,
        params=params_from_dict(PARAMS),
        num_queries=QUERIES,
        seed=1,
        repo=root,
    )
    return {"root": root, "paths": paths, "html": out.read_text(), "out": out, "trained": trained, "zs": zs}


def rows_of(html: str, table_id: str) -> list[list[str]]:
    """Cell texts (tags stripped) of every row of the table ``table_id``."""
    found = re.search(rf'<table id="{re.escape(table_id)}">(.*?)</table>', html, re.S)
    assert found, f"no table {table_id}"
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", found.group(1), re.S)
    return [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)] for r in rows
    ]


def row(rows: list[list[str]], first: str) -> list[str]:
    return next(r for r in rows if r and r[0] == first)


def want(block: dict) -> list[str]:
    """A metrics block's numbers as the retrieval tables print them."""
    return [f"{block[d][c]:.1f}" for d in ("t2v", "v2t") for c in ("R@1", "R@5", "R@10", "MdR", "MnR")]


def test_metrics_tables_show_the_metrics_files_numbers(run: dict) -> None:
    html, tr, zs = run["html"], run["trained"], run["zs"]
    plain = rows_of(html, "metrics-plain")
    assert row(plain, "DiscoVLA (trained)")[1:] == want(tr)
    assert row(plain, "zero-shot (frozen CLIP)")[1:] == want(zs)
    dsl = rows_of(html, "metrics-dsl")
    assert row(dsl, "DiscoVLA (trained)")[1:] == want(tr["dsl"])
    assert row(dsl, "zero-shot (frozen CLIP)")[1:] == want(zs["dsl"])
    twins = rows_of(html, "metrics-twins")
    for kind in ("order", "content"):
        assert row(twins, f"{kind} twins")[1:3] == [f"{zs['twins'][kind]:.1f}", f"{tr['twins'][kind]:.1f}"]
    epochs = rows_of(html, "train-epochs")  # with the run info (metrics/info/train.json) merged back in
    assert epochs[0][-1] == "seconds" and row(epochs, "2")[1] == "1.000" and row(epochs, "2")[-1] == "6.500"
    assert "trainable parameters, 12.5 s</p>" in html and "<summary>metrics/shapes.json</summary>" in html
    ablation = rows_of(html, "ablation")
    assert row(ablation, "LoRA only")[1] == "13.3 ± 2.1" and row(ablation, "LoRA only")[-1] == "20,480"
    assert row(ablation, "Zero-shot (frozen CLIP, mean of frames)")[1:3] == ["6.0", "–"]
    assert rows_of(html, "ablation-static") == ablation  # the static-caption world's table, its own section
    assert '<section id="ablation-static">' in html


def test_every_image_is_an_inline_png_and_nothing_is_fetched(run: dict) -> None:
    html = run["html"]
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) >= 2 + 2 * QUERIES * 5  # two plots, the strips
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True))) as im:
            assert im.format == "PNG"
            im.load()
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(s.startswith(("data:", "#")) for s in links)
    assert not re.search(r'(?:src|href)=["\']?\s*(?:https?:)?//', html)


def test_query_cards_show_the_top5_with_the_correct_video_marked(run: dict) -> None:
    cards = re.findall(
        r'<div class="card query" data-video="([^"]+)" data-rank="(\d+)">(.*?)</table></div>',
        run["html"],
        re.S,
    )
    assert len(cards) == 2 * QUERIES  # the seeded sample, then the worst-ranked
    for video, rank, body in cards:
        results = re.findall(r'<tr class="result( correct)?">.*?<code>([^<]+)</code>', body, re.S)
        assert len(results) == 5 and body.count('class="strip"') >= 5
        marked = [v for hit, v in results if hit]
        assert marked == ([video] if int(rank) <= 5 else [])
        assert (int(rank) > 5) == ('<tr class="truth">' in body)
        if int(rank) <= 5:
            assert results[int(rank) - 1][1] == video
    worst = [int(r) for _, r, _ in cards[QUERIES:]]
    assert worst == sorted(worst, reverse=True) and worst[0] >= max(int(r) for _, r, _ in cards[:QUERIES])


def test_confused_twins_show_both_strips_and_scores(run: dict) -> None:
    html = run["html"]
    assert '<section id="twins">' in html
    for kind in ("order", "content"):
        assert re.search(rf"{kind} twins</h3><p class=\"note\">\d of 2 caption-twin pairs confused", html)
    for card in re.findall(r'<div class="card twin".*?</div></div></div>', html, re.S):
        assert card.count('class="strip"') == 2 and len(re.findall(r": -?\d\.\d{3}", card)) == 2


def test_reversal_test_table_and_backwards_panel(run: dict) -> None:
    html, tr, zs = run["html"], run["trained"], run["zs"]
    rev = rows_of(html, "metrics-reversal")
    assert rev[1][1:] == [f"{zs['reversal']['all']:.1f}", f"{tr['reversal']['all']:.1f}"]
    assert rev[2][0] == "captions that state an order (1)" and zs["reversal"]["ordered_captions"] == 1
    assert zs["reversal"]["all"] == 50.0  # the frozen mean of frames is order-blind: every caption ties
    assert '<section id="reversal">' in html
    cards = re.findall(r'<div class="card reversal" data-higher="(\w+)">(.*?)</div></div>\s*<p', html, re.S)
    assert len(cards) == 1  # only te1's caption states an order
    higher, body = cards[0]
    assert "a square rises, then a circle appears" in body
    fwd, bwd = (float(x) for x in re.findall(r"wards: (-?\d\.\d{3})", body))
    assert higher == ("forwards" if fwd > bwd else "backwards") or abs(fwd - bwd) < 1e-3
    titles = re.findall(r'title="te1: frames \[([\d, ]+)\]', body)
    assert [t.split(", ") for t in titles] == [["0", "1", "2", "3"], ["3", "2", "1", "0"]][: len(titles)]
    assert len(titles) == 2


def test_text_is_escaped(run: dict) -> None:
    html = run["html"]
    assert "<script" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; a red square" in html


def test_identity_params_diff_and_commit(run: dict) -> None:
    html = run["html"]
    diff = rows_of(html, "params-diff")
    assert diff[1:] == [["fusion.beta", "0.25", "1.0"], ["train.epochs", "2", "5"]]
    ident = {r[0]: r[1] for r in rows_of(html, "identity")}
    assert ident["git commit"] == "unknown (not a git repository)"
    assert ident["backbone (adapters)"].startswith("tiny-clip (") and ident["frames per video"] == str(F)
    assert ident["dataset"] == "shapes (data/shapes)"
    assert ident["captioner"] == "models/tiny-blip (from params.yaml)"


def test_optional_ablation_and_stale_metrics_warning(run: dict, tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    shutil.copytree(run["paths"]["metrics_dir"], metrics)
    (metrics / "ablation.json").unlink()
    stale = json.loads((metrics / "retrieval.json").read_text())
    stale["t2v"]["R@1"] += 10.0
    write_json(metrics / "retrieval.json", stale)
    paths = {**run["paths"], "metrics_dir": metrics}
    html = build_report(**paths, params=params_from_dict(PARAMS), num_queries=1, repo=REPO)
    assert 'id="ablation"' not in html and "metrics are stale" in html
    assert re.search(r"git commit</td><td>[0-9a-f]{40}", html) or "unknown" in html


def test_stage_script_writes_the_page_and_says_how_to_open_it(run: dict, tmp_path: Path) -> None:
    p = run["paths"]
    out = tmp_path / "reports" / "index.html"
    cmd = [
        sys.executable,
        str(REPO / "stages" / "report.py"),
        "--metrics-dir",
        str(p["metrics_dir"]),
        "--frames",
        str(p["frames_dir"]),
        "--features",
        str(p["features_dir"]),
        "--adapters",
        str(p["adapters_dir"]),
        "--out",
        str(out),
    ]
    work = tmp_path / "work"  # params.yaml's report section sets how many queries the page shows
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump({**PARAMS, "report": {"queries": 2, "seed": 3}}))
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"xdg-open {out}" in done.stdout and out.as_uri() in done.stdout
    assert [f.name for f in out.parent.iterdir()] == ["index.html"]  # atomic: no temporary left
    assert out.read_text().count('<div class="card query"') == 4
    with pytest.raises(ReportError, match="train stage"):  # a known error: the stage prints one line, exits 2
        build_report(**{**p, "adapters_dir": tmp_path / "nope"}, params=params_from_dict(PARAMS))


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def test_page_renders_in_headless_chromium(run: dict, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("Chromium not installed: no chromium, chromium-browser or google-chrome on PATH")
    shot = tmp_path / "out.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        run["out"].resolve().as_uri(),
    ]
    subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=120)
    assert shot.is_file(), "Chromium wrote no screenshot"
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (2000, 1280) and pixels.std() > 10  # not a blank page


# The report stage for dvc.yaml (not there yet): the drift checker of test_dvc_deps must accept it.
