"""Where the code runs: the one device resolver and the one offline flag of the Hugging Face stack."""

from __future__ import annotations

import os

import torch

from discovla.errors import DiscoVLAError

_TRUE = ("1", "true", "yes", "on")


class DeviceError(DiscoVLAError, RuntimeError):
    """A requested device that this machine does not have."""


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU. ``cuda`` means this process's GPU (``cuda:LOCAL_RANK``
    under torchrun); an explicit ``cuda:N`` or ``cpu`` is taken as given. CUDA without a GPU is a
    :class:`DeviceError`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but CUDA is not available (use auto or cpu)")
        if device == "cuda":
            device = f"cuda:{local_rank}"
    return torch.device(device)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set now (huggingface_hub reads them only at
    import, so a flag set later by a test or a caller must be checked here)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in _TRUE for f in flags)
