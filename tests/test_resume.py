"""Resume that holds on several ranks and with fused AdamW; one run key trained by one process at a time."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from discovla.artifacts.adapters import CHECKPOINTS_ENV, RunLock, apply_checkpoint, read_checkpoint
from discovla.model import DiscoVLA
from discovla.train import run_key, train

HELPERS = Path(__file__).parent / "helpers"
sys.path.insert(0, str(HELPERS))

from resume_train import CFG  # noqa: E402

SCRIPT = HELPERS / "resume_train.py"
REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def _torchrun(out: Path, ckpt: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    with socket.socket() as s:  # a free port, so parallel or repeated runs do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(port), str(SCRIPT), str(out), *args]
    return subprocess.run(cmd, env=_env(**{CHECKPOINTS_ENV: str(ckpt)}), capture_output=True)


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())


def test_two_ranks_with_separate_roots_resume_together(tmp_path: Path) -> None:
    """torchrun, 2 gloo ranks, each with its own checkpoint root (two nodes without a shared disk): rank 1
    fails after epoch 1, the job leaves no adapters; the rerun resumes epoch 1 on both ranks and ends with
    the adapters of an uninterrupted 2-rank run, bit for bit."""
    full = _torchrun(tmp_path / "full", tmp_path / "ck-full", "--per-rank-roots")
    assert full.returncode == 0, full.stderr.decode()[-3000:]

    killed = _torchrun(
        tmp_path / "run", tmp_path / "ck", "--per-rank-roots", "--stop-after-epoch", "1", "--fail-rank", "1"
    )
    assert killed.returncode != 0
    assert not (tmp_path / "run/adapters").exists()  # a rank's failure leaves no final outputs
    assert [p.name for p in (tmp_path / "ck/rank0").glob("*/epoch-*")] == ["epoch-001"]
    assert not list((tmp_path / "ck").glob("rank1/*/epoch-*"))  # rank 1's root holds nothing to resume

    resumed = _torchrun(tmp_path / "run", tmp_path / "ck", "--per-rank-roots")
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    records = [json.loads((tmp_path / f"run/rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["resumed_from_epoch"] for r in records] == [1, 1]  # both ranks resumed the same epoch
    assert "resuming from" in resumed.stdout.decode()
    reference = load_file(str(tmp_path / "full/adapters/adapters.safetensors"))
    _same_tensors(reference, load_file(str(tmp_path / "run/adapters/adapters.safetensors")))
    _same_tensors(reference, load_file(str(tmp_path / "run/rank1.safetensors")))  # rank 1 ends identical
    assert any(float(v.abs().max()) > 0 for k, v in reference.items() if "lora_B" in k)


def test_fused_adamw_resumes_bit_identical(features, tiny_clip_factory, tmp_path: Path, monkeypatch) -> None:
    """fused=True (torch's fused AdamW kernel, here on the CPU): killed after epoch 1 and resumed ends with
    the adapters of an uninterrupted fused run."""
    fused_flags = []
    adamw = torch.optim.AdamW

    def spy(*args, **kwargs):
        fused_flags.append(kwargs.get("fused"))
        return adamw(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    cfg = replace(CFG, fused=True)
    full, _ = train(tiny_clip_factory(), features, cfg, tmp_path / "a", progress=False)
    train(tiny_clip_factory(), features, cfg, tmp_path / "b", stop_after_epoch=1, progress=False)
    resumed, rec = train(tiny_clip_factory(), features, cfg, tmp_path / "b", progress=False)
    assert fused_flags == [True, True, True] and rec["resumed_from_epoch"] == 1
    _same_tensors(full.adapter_state_dict(), resumed.adapter_state_dict())


@pytest.mark.parametrize("fused", [False, True])
def test_restored_optimizer_equals_torchs_own_round_trip(
    features, tiny_clip_factory, tmp_path: Path, fused: bool
) -> None:
    """A checkpoint restores AdamW exactly as ``load_state_dict(state_dict())`` would: the same values,
    dtypes and devices of every moment and of ``step`` (the fused kernel needs it where the parameter is)."""
    cfg = replace(CFG, epochs=1, fused=fused)
    trained, rec = train(tiny_clip_factory(), features, cfg, tmp_path, progress=False)
    ckpt = Path(rec["run_dir"]) / "epoch-001"
    tensors, state = read_checkpoint(ckpt)

    def fresh() -> tuple[DiscoVLA, torch.optim.Optimizer]:
        torch.manual_seed(cfg.seed)
        model = DiscoVLA(tiny_clip_factory(), cfg.model)
        return model, torch.optim.AdamW(model.trainable_parameters(), lr=cfg.lr, fused=fused or None)

    model, opt = fresh()
    apply_checkpoint(tensors, state, model, opt)
    _same_tensors(trained.adapter_state_dict(), model.adapter_state_dict())
    # torch's reference: an optimizer restored from another's state_dict holding the same values
    ref_model, ref_opt = fresh()
    ref_opt.load_state_dict(opt.state_dict())
    got, want = opt.state_dict()["state"], ref_opt.state_dict()["state"]
    assert got.keys() == want.keys() and len(got) == len(model.trainable_parameters())
    for i in got:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            a, b = got[i][k], want[i][k]
            assert (a.dtype, a.device) == (b.dtype, b.device) and torch.equal(a, b), (i, k)
        assert float(got[i]["step"]) == state["opt_step"] == 4.0  # 4 steps of epoch 1


def test_second_process_on_the_same_key_waits_and_reuses(tmp_path: Path) -> None:
    """Two processes training the same run key at once: both wait while the key is locked, then one
    trains and the other reuses its finished run; both end with identical adapters, one intact run dir."""
    from resume_train import make_inputs

    clip, features = make_inputs()
    key = run_key(CFG, features, clip)
    ckpt = tmp_path / "ck"
    procs = []
    with RunLock(ckpt / key):  # hold the key so that both processes must wait for it
        for name in ("p1", "p2"):
            err = open(tmp_path / f"{name}.err", "wb")  # noqa: SIM115 (closed below)
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, str(SCRIPT), str(tmp_path / name)],
                        env=_env(**{CHECKPOINTS_ENV: str(ckpt)}),
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    ),
                    err,
                )
            )
        for proc, _ in procs:  # each says it waits (no timing: read until the line comes or the pipe ends)
            lines = []
            while not (lines and lines[-1].startswith("waiting for")):
                line = proc.stdout.readline()
                assert line, (lines, (tmp_path / "p1.err").read_text()[-2000:])
                lines.append(line)
    outs = []
    for proc, err in procs:
        rest = proc.stdout.read()
        assert proc.wait() == 0, (tmp_path / "p1.err").read_text()[-2000:]
        err.close()
        outs.append(rest)
    records = [json.loads((tmp_path / f"{n}/rank0.json").read_text()) for n in ("p1", "p2")]
    assert sorted(r["resumed_from_epoch"] for r in records) == [0, 2]  # one trained, one reused
    assert all(r["checkpoint_key"] == key for r in records)
    _same_tensors(
        load_file(str(tmp_path / "p1/adapters/adapters.safetensors")),
        load_file(str(tmp_path / "p2/adapters/adapters.safetensors")),
    )
    run = ckpt / key
    assert sorted(p.name for p in run.iterdir()) == [".lock", "epoch-001", "epoch-002"]
    for epoch in ("epoch-001", "epoch-002"):
        assert sorted(p.name for p in (run / epoch).iterdir()) == ["state.json", "state.safetensors"]
