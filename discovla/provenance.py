"""Content fingerprints: which code and which bytes produced a result.

A training checkpoint may only be resumed by a run with the same configuration, the same input bytes and
the same code. :func:`import_closure` finds, by reading source (AST, nothing is executed), every module of
this package that a module imports, directly or through others, including imports inside functions;
:func:`source_digest` hashes their source. :func:`files_digest` and :func:`tensors_digest` hash data.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

PACKAGE = "discovla"
ROOT = Path(__file__).resolve().parent


def module_path(name: str, root: Path | None = None) -> Path | None:
    """Source file of ``discovla.x.y`` (a module or a package's ``__init__.py``) under ``root`` (default:
    this package's directory), None if absent."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = (root or ROOT).joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, name: str, root: Path) -> set[str]:
    """Package modules named by the import statements of one file (``from a import b``: a.b if a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == PACKAGE and module_path(m, root) is not None}


def import_closure(modules: Iterable[str], root: Path | None = None) -> list[str]:
    """Every ``discovla`` module that importing ``modules`` imports (themselves and their packages included),
    read from the sources under ``root`` (default: this package)."""
    root = root or ROOT
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name, root)
        if path is None:
            raise ModuleNotFoundError(f"no module {name} in {root}")
        seen.add(name)
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo.extend(p for p in parents if module_path(p, root) is not None)
        todo.extend(_imports(path, name, root) - seen)
    return sorted(seen)


def source_digest(modules: Iterable[str], root: Path | None = None) -> str:
    """sha256 over the names and source bytes of the import closure of ``modules``."""
    h = hashlib.sha256()
    for name in import_closure(modules, root):
        h.update(name.encode() + b"\0" + module_path(name, root).read_bytes() + b"\0")  # type: ignore[union-attr]
    return h.hexdigest()


def files_digest(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """sha256 over (relative name, bytes) of each file, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        name = str(p.relative_to(root)) if root is not None else p.name
        h.update(name.encode() + b"\0")
        with open(p, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def tensors_digest(items: Iterable[tuple[str, torch.Tensor | np.ndarray]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of named tensors or arrays."""
    h = hashlib.sha256()
    for name, t in items:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            a = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        else:
            a = np.ascontiguousarray(t)
        h.update(f"{name}|{a.dtype}|{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()
