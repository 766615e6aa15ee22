"""Trained adapters (output of the ``train`` stage) and the training loop's epoch checkpoints.

Adapters: ``adapters.safetensors`` (the trainable tensors only) + ``config.json`` (the model config and run
info), one atomic directory; :func:`load_adapters` rebuilds the model on a frozen CLIP. Checkpoints:
``<run dir>/epoch-XXX/{state.safetensors, state.json}`` (adapters, AdamW moments, counters and the training
record), written atomically after every epoch so an interrupted run resumes exactly. safetensors + JSON
only: nothing is ever unpickled.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

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
    """The last complete ``epoch-XXX`` checkpoint of ``run_dir``, or None."""
    done = sorted(p for p in run_dir.glob("epoch-*") if (p / "state.json").exists())
    return done[-1] if done else None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors (``adapter.*``, ``opt.exp_avg.*``, ``opt.exp_avg_sq.*``, float32 on the CPU) and the JSON
    state (``epoch``, ``record``, ``opt_step``) of one checkpoint directory."""
    tensors = load_file(str(path / "state.safetensors"))
    state = json.loads((path / "state.json").read_text())
    return tensors, state


def apply_checkpoint(
    tensors: dict[str, torch.Tensor], state: dict[str, Any], model: DiscoVLA, opt: torch.optim.Optimizer
) -> None:
    """Load checkpoint tensors into ``model``'s adapters and ``opt``, the optimizer through its own
    ``load_state_dict``: it puts every moment on its parameter's device and dtype and the ``step`` counter
    where the optimizer's kernel expects it (on the parameter's device for ``fused`` or ``capturable``
    AdamW, a CPU scalar otherwise), exactly as an optimizer restored from its own ``state_dict``."""
    device = next(iter(model.trainable_parameters())).device
    adapters = {k[len("adapter.") :]: v.to(device) for k, v in tensors.items() if k.startswith("adapter.")}
    model.load_adapter_state_dict(adapters)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    current = opt.state_dict()  # its param_groups number the parameters in order: 0, 1, ...
    moments: dict[int, dict[str, torch.Tensor]] = {}
    index = 0
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if f"opt.exp_avg.{name}" in tensors:
                moments[index] = {
                    "step": torch.tensor(float(state["opt_step"]), dtype=torch.float32),
                    "exp_avg": tensors[f"opt.exp_avg.{name}"],
                    "exp_avg_sq": tensors[f"opt.exp_avg_sq.{name}"],
                }
            index += 1
    opt.load_state_dict({"state": moments, "param_groups": current["param_groups"]})


def load_checkpoint(path: Path, model: DiscoVLA, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore ``model``'s adapters and ``opt`` from the checkpoint at ``path``; return its JSON state."""
    tensors, state = read_checkpoint(path)
    apply_checkpoint(tensors, state, model, opt)
    return state


class RunLock:
    """An exclusive lock on a run directory (``fcntl.flock`` on ``<run dir>/.lock``), so two processes
    training the same key (queued experiments with identical params) never write its checkpoints at once:
    the second waits, then finds the first's finished checkpoints and reuses them. flock works across
    processes of one host and on a shared POSIX filesystem (NFS emulates it with byte-range locks); the
    lock is released when the holder closes it or dies."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self._file: IO[bytes] | None = None

    def acquire(self, block: bool = True) -> bool:
        """Take the lock (waiting for it when ``block``); return whether it is held."""
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "ab")  # noqa: SIM115 (held open while locked)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            return False
        except BaseException:
            f.close()
            raise
        self._file = f
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def checkpoint_root() -> Path:
    """Where runs keep their checkpoints: ``$DISCOVLA_CHECKPOINTS`` or ``.work/checkpoints``, a relative
    path taken against the working directory (the repository root under DVC) and returned absolute. One
    root is shared by the train stage, experiments and the ablation: keys are content hashes
    (:func:`discovla.train.run_key`), so a finished run is reused only by an identical one. Set an absolute
    path for ``dvc exp run --queue``, whose runs happen in temporary copies of the repository. Under
    ``torchrun`` on several nodes, rank 0's root decides the resume and its state is broadcast, so a root
    shared by all nodes is recommended (checkpoints survive the loss of node 0) but not required."""
    return Path(os.environ.get(CHECKPOINTS_ENV) or DEFAULT_CHECKPOINTS).absolute()
