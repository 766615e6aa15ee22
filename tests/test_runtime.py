"""Device resolution, the offline flag, and the process-group backend chosen for a device."""

from __future__ import annotations

import pytest
import torch

from discovla import distributed
from discovla.runtime import DeviceError, hub_offline, resolve_device


def test_auto_is_cpu_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")


def test_cuda_means_this_ranks_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda:3")
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")


def test_hub_offline_reads_the_environment_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not hub_offline()
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert hub_offline()


@pytest.mark.parametrize(
    ("cuda", "device", "backend"),
    [(True, "auto", "nccl"), (True, "cuda", "nccl"), (True, "cpu", "gloo"), (False, "auto", "gloo")],
)
def test_torchrun_picks_the_backend_of_the_resolved_device(
    monkeypatch: pytest.MonkeyPatch, cuda: bool, device: str, backend: str
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    chosen = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda b: chosen.append(b))
    d, dev = distributed.init_distributed(device)
    assert chosen == [backend] and (d.rank, d.world, d.local_rank) == (1, 2, 1)
    assert dev == (torch.device("cuda:1") if backend == "nccl" else torch.device("cpu"))
