"""Content fingerprints: the import closure is read from source, and a digest moves with any changed byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from discovla.provenance import ROOT, files_digest, import_closure, source_digest, tensors_digest

TRAINING = ["discovla.train"]


def test_closure_follows_imports_transitively_and_includes_packages() -> None:
    mods = import_closure(TRAINING)
    # train imports model (a package) -> model.discovla -> model.fusion -> model.lora; and losses
    for m in (
        "discovla.train",
        "discovla.losses",
        "discovla.model",
        "discovla.model.fusion",
        "discovla.model.lora",
    ):
        assert m in mods, m
    assert "discovla.captioner" not in mods and "discovla.cli" not in mods


def test_closure_sees_imports_inside_functions(tmp_path: Path) -> None:
    pkg = tmp_path / "discovla"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from discovla import b\n    return b\n")
    (pkg / "b.py").write_text("from .c import x\n")
    (pkg / "c.py").write_text("x = 1\n")
    (pkg / "d.py").write_text("y = 2\n")
    assert import_closure(["discovla.a"], root=pkg) == ["discovla", "discovla.a", "discovla.b", "discovla.c"]


def test_source_digest_moves_with_code_in_the_closure_only(tmp_path: Path) -> None:
    copy = tmp_path / "discovla"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_digest(TRAINING, root=copy)
    assert before == source_digest(TRAINING)  # the same bytes give the same digest wherever they are
    (copy / "captioner.py").write_text((copy / "captioner.py").read_text() + "\n# outside the closure\n")
    assert source_digest(TRAINING, root=copy) == before
    (copy / "losses.py").write_text((copy / "losses.py").read_text() + "\n# one more line\n")
    assert source_digest(TRAINING, root=copy) != before


def test_data_digests_move_with_one_byte(tmp_path: Path) -> None:
    for name in ("a.bin", "b.bin"):
        (tmp_path / name).write_bytes(bytes(range(256)))
    files = sorted(tmp_path.iterdir())
    d0 = files_digest(files, root=tmp_path)
    raw = bytearray((tmp_path / "b.bin").read_bytes())
    raw[100] ^= 1
    (tmp_path / "b.bin").write_bytes(bytes(raw))
    assert files_digest(files, root=tmp_path) != d0

    t = torch.zeros(4, 4, dtype=torch.uint8)
    d1 = tensors_digest([("x", t)])
    assert d1 == tensors_digest([("x", np.zeros((4, 4), np.uint8))])
    t[2, 3] = 1
    assert tensors_digest([("x", t)]) != d1
    assert tensors_digest([("x", torch.zeros(2, dtype=torch.bfloat16))]) != tensors_digest(
        [("x", torch.zeros(2, dtype=torch.float16))]
    )
