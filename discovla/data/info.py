"""What ``discovla datasets`` says about a dataset (:class:`DatasetInfo`); each reader module defines one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetInfo:
    """What ``discovla datasets`` says about a dataset: its splits and test protocol, the frames and text
    context length the papers use with it (``preset``: the params that apply them), and its files."""

    summary: str
    splits: str
    protocol: str
    frames: int
    context_length: int
    files: str
    source: str
    preset: dict[str, Any] = field(default_factory=dict)

    def preset_command(self, name: str, root: str) -> str:
        """The ``dvc exp run`` line that runs the pipeline on this dataset with the papers' settings."""
        sets = {"data.dataset": name, "data.root": root, **self.preset}
        return "dvc exp run " + " ".join(f"-S {k}={v}" for k, v in sets.items())
