"""Ablation runs: content-keyed reuse, the rows' configs, and the tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from discovla.ablation import run_ablation, run_one, variant_config
from discovla.artifacts.ablation import diagnostics_table, label, markdown_table, run_record_path
from discovla.config import params_from_dict

PARAMS = params_from_dict(
    {
        "frames": {"num_frames": 4},
        "lora": {"rank": 4},
        "fusion": {"vision_layers": 2, "text_layers": 1, "adapter_dim": 4},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu"},
        "evaluate": {"batch_size": 32, "chunk_size": 5},
    }
)


def test_ablation_run_is_reused_only_when_identical(features, tiny_clip_factory, tmp_path: Path) -> None:
    first = run_one(PARAMS, features, tiny_clip_factory, "ivfusion", 1, tmp_path)
    again = run_one(PARAMS, features, tiny_clip_factory, "ivfusion", 1, tmp_path)
    assert first["resumed_from_epoch"] == 0 and again["resumed_from_epoch"] == 1
    assert again["checkpoint_key"] == first["checkpoint_key"]
    assert again["t2v_R@1"] == first["t2v_R@1"] and again["epochs"] == first["epochs"]
    other_seed = run_one(PARAMS, features, tiny_clip_factory, "ivfusion", 2, tmp_path)
    assert other_seed["checkpoint_key"] != first["checkpoint_key"] and other_seed["resumed_from_epoch"] == 0
    features.cap_tokens[0, 1] += 1  # one changed token id of the training input
    changed = run_one(PARAMS, features, tiny_clip_factory, "ivfusion", 1, tmp_path)
    assert changed["checkpoint_key"] != first["checkpoint_key"] and changed["resumed_from_epoch"] == 0


def test_rows_train_only_what_can_receive_a_gradient() -> None:
    cfgs = {
        v: variant_config(PARAMS, v, 1, 4) for v in ("lora", "ivfusion", "pimgalign", "full", "beta=0.03")
    }
    assert not cfgs["lora"].model.fusion
    # no pseudo captions are encoded without alpha and beta: no text-side adapters
    assert cfgs["ivfusion"].model.text_layers == 0 and cfgs["ivfusion"].model.vision_layers == 2
    assert cfgs["pimgalign"].model.text_layers == 1 and cfgs["pimgalign"].beta == 0.0
    assert cfgs["beta=0.03"].beta == 0.03 and cfgs["full"].beta == PARAMS.fusion.beta
    assert variant_config(PARAMS, "full_detach", 1, 4).detach_teacher
    assert variant_config(PARAMS, "full_mean", 1, 4).distill_scale == "mean"
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config(PARAMS, "beta=abc", 1, 4)


def test_a_row_can_train_longer_than_the_params(tmp_path: Path) -> None:
    base, longer = variant_config(PARAMS, "order", 1, 4), variant_config(PARAMS, "order@e3", 1, 4)
    assert base.epochs == PARAMS.train.epochs == 1 and longer.epochs == 3
    assert dataclasses.replace(longer, epochs=1) == base  # nothing else of the row changes
    beta = variant_config(PARAMS, "beta=0.1@e2", 1, 4)
    assert beta.beta == 0.1 and beta.epochs == 2
    assert label("order@e8") == label("order") + ", 8 epochs"
    assert label("beta=0.25@e8") == "Full DiscoVLA, beta = 0.25, 8 epochs"
    assert run_record_path(tmp_path, "beta=0.25@e8", 2).name == "beta0.25_e8-seed2.json"
    for bad in ("order@8", "order@e0", "order@e", "order@e2x", "nope@e2"):
        with pytest.raises(ValueError, match="unknown variant"):
            variant_config(PARAMS, bad, 1, 4)


def test_tables_have_a_row_per_variant_and_epoch(features, tiny_clip_factory, tmp_path: Path) -> None:
    result = run_ablation(
        PARAMS,
        features,
        tiny_clip_factory,
        seeds=[1, 2],
        variants=["zeroshot", "lora", "beta=0.5"],
        ckpt_root=tmp_path,
        log=lambda _: None,
    )
    assert result["summary"]["lora"]["t2v_R@1"]["n"] == 2
    table = markdown_table(result)
    assert "| LoRA only |" in table and "| Full DiscoVLA, beta = 0.5 |" in table and "±" in table
    diag = diagnostics_table(result)
    rows = [line for line in diag.splitlines() if line.startswith("| Full DiscoVLA, beta = 0.5 | 1 |")]
    assert len(rows) == 1 and "–" not in rows[0].split("|")[3]  # train-batch R@1 recorded


def test_records_resume_an_ablation_without_its_checkpoints(
    features, tiny_clip_factory, tmp_path: Path
) -> None:
    records, logs = tmp_path / "ablation_runs", []
    kw = {"seeds": [1], "variants": ["zeroshot", "lora"], "records": records, "log": logs.append}
    first = run_ablation(PARAMS, features, tiny_clip_factory, ckpt_root=tmp_path / "a", **kw)
    assert sorted(p.name for p in records.iterdir()) == ["lora-seed1.json"]
    # another machine: no checkpoints, only the committed records -> nothing is trained
    logs.clear()
    again = run_ablation(PARAMS, features, tiny_clip_factory, ckpt_root=tmp_path / "b", **kw)
    assert not (tmp_path / "b").exists()
    assert again["runs"] == first["runs"] and any("from its record" in line for line in logs)
    # changed input: the record's checkpoint key no longer matches, so the run trains afresh
    features.cap_tokens[0, 1] += 1
    changed = run_ablation(PARAMS, features, tiny_clip_factory, ckpt_root=tmp_path / "c", **kw)
    assert (tmp_path / "c").exists()
    assert changed["runs"]["lora"][0]["checkpoint_key"] != first["runs"]["lora"][0]["checkpoint_key"]


def test_a_record_made_on_a_gpu_builds_the_table_on_a_cpu(
    features, tiny_clip_factory, tmp_path: Path
) -> None:
    """The checkpoint key holds the device kind as resolved where the run trained: a GPU record is checked
    against the key this config gets on a GPU (``auto`` only), never taken for a CPU run's own key."""
    import torch

    from discovla.ablation import as_recorded
    from discovla.artifacts.ablation import write_run_record
    from discovla.train import run_key

    auto = params_from_dict({**PARAMS.model_dump(), "train": {**PARAMS.train.model_dump(), "device": "auto"}})
    cfg = variant_config(auto, "lora", 1, 4)
    gpu, cpu = tmp_path / "gpu.json", tmp_path / "cpu.json"
    write_run_record(gpu, {"device": "NVIDIA H200"})
    write_run_record(cpu, {"device": "cpu (x86_64)"})
    clip = tiny_clip_factory()
    here = run_key(cfg, features, clip)
    on_gpu = run_key(as_recorded(cfg, gpu), features, clip)
    assert on_gpu == run_key(dataclasses.replace(cfg, device=torch.device("cuda")), features, clip)
    assert on_gpu != here  # a GPU run (bf16 under auto) is another run than this CPU's
    assert run_key(as_recorded(cfg, cpu), features, clip) == here
    assert run_key(as_recorded(cfg, tmp_path / "absent.json"), features, clip) == here
    explicit = variant_config(PARAMS, "lora", 1, 4)  # train.device: cpu never takes a GPU record
    assert as_recorded(explicit, gpu) is explicit

    # the ablation takes the GPU record (no training here) and counts its device in the table
    records = tmp_path / "ablation_runs"
    record = {
        "t2v_R@1": 1.0,
        "t2v_R@5": 2.0,
        "v2t_R@1": 3.0,
        "checkpoint_key": on_gpu,
        "device": "NVIDIA H200",
    }
    write_run_record(run_record_path(records, "lora", 1), record)
    out = run_ablation(
        auto,
        features,
        tiny_clip_factory,
        [1],
        ["lora"],
        tmp_path / "ckpt",
        log=lambda _: None,
        records=records,
    )
    assert not (tmp_path / "ckpt").exists() and out["runs"]["lora"] == [record]
    assert out["devices"] == {"NVIDIA H200": 1}
    assert "Trained on: NVIDIA H200 (1 run)." in markdown_table(out)
