"""Trained adapters (output of the ``train`` stage) and the training loop's epoch checkpoints.

Adapters: ``adapters.safetensors`` (the trainable tensors only) + ``config.json`` (the model config and run
info), one atomic directory; :func:`load_adapters` rebuilds the model on a frozen CLIP. Checkpoints:
``<run dir>/epoch-XXX/{state.safetensors, state.json}`` (adapters, AdamW moments, counters and the training
record), written atomically after every epoch so an interrupted run resumes exactly. safetensors + JSON
only: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from discovla.io import atomic_dir, write_json
from discovla.model import DiscoVLA, DiscoVLAConfig

CHECKPOINTS_ENV = "DISCOVLA_CHECKPOINTS"
DEFAULT_CHECKPOINTS = ".work/checkpoints"


def save_adapters(out_dir: str | Path, model: DiscoVLA, info: dict[str, Any]) -> None:
    """``adapters.safetensors`` (trainable tensors only) + ``config.json``, as one atomic directory."""
    with atomic_dir(out_dir) as tmp:
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.adapter_state_dict().items()}
        save_file(tensors, str(tmp / "adapters.safetensors"))
        write_json(tmp / "config.json", {"model": model.config_dict(), **info})


def load_adapters(path: str | Path, clip: torch.nn.Module, device: str = "cpu") -> DiscoVLA:
    """Rebuild a trained DiscoVLA from ``adapters.safetensors`` + ``config.json`` and a frozen CLIP."""
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())["model"]
    model = DiscoVLA(clip, DiscoVLAConfig(**cfg)).to(device)
    model.load_adapter_state_dict(
        {k: v.to(device) for k, v in load_file(str(path / "adapters.safetensors")).items()}
    )
    return model.eval()


def save_checkpoint(
    ckpt_dir: Path, model: DiscoVLA, opt: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Adapters + optimizer moments as safetensors, counters as JSON; the directory appears atomically."""
    tensors = {
        f"adapter.{k}": v.detach().float().cpu().contiguous() for k, v in model.adapter_state_dict().items()
    }
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    tensors[f"opt.{key}.{names[id(p)]}"] = st[key].detach().float().cpu().contiguous()
            if "step" in st:
                state.setdefault("opt_step", float(st["step"]))
    with atomic_dir(ckpt_dir / f"epoch-{state['epoch']:03d}") as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", state)


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = sorted(p for p in run_dir.glob("epoch-*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(path: Path, model: DiscoVLA, opt: torch.optim.Optimizer) -> dict[str, Any]:
    tensors = load_file(str(path / "state.safetensors"))
    state = json.loads((path / "state.json").read_text())
    device = next(iter(model.trainable_parameters())).device
    adapters = {k[len("adapter.") :]: v.to(device) for k, v in tensors.items() if k.startswith("adapter.")}
    model.load_adapter_state_dict(adapters)
    for name, p in model.named_parameters():
        if not p.requires_grad or f"opt.exp_avg.{name}" not in tensors:
            continue
        opt.state[p] = {
            "step": torch.tensor(state["opt_step"]),
            "exp_avg": tensors[f"opt.exp_avg.{name}"].to(p.device, p.dtype),
            "exp_avg_sq": tensors[f"opt.exp_avg_sq.{name}"].to(p.device, p.dtype),
        }
    return state


def checkpoint_root() -> Path:
    """Where runs keep their checkpoints: ``$DISCOVLA_CHECKPOINTS`` or ``.work/checkpoints``. One root is
    shared by the train stage, experiments and the ablation: keys are content hashes (:func:`run_key`), so
    a finished run is reused only by an identical one. Set an absolute path for ``dvc exp run --queue``,
    whose runs happen in temporary copies of the repository."""
    return Path(os.environ.get(CHECKPOINTS_ENV) or DEFAULT_CHECKPOINTS)
