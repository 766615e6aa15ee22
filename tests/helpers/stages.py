"""Run a stage script exactly as ``dvc repro`` does: the command line comes from dvc.yaml."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def stage_command(stage: str) -> list[str]:
    """``cmd`` of ``stage`` in dvc.yaml with this interpreter and the script's absolute path (relative
    paths in its options resolve against the working directory, as under DVC)."""
    cmd = shlex.split(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    assert cmd[0] == "python" and cmd[1].startswith("stages/"), cmd
    return [sys.executable, str(REPO / cmd[1]), *cmd[2:]]
