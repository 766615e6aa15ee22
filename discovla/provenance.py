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


def file_imports(path: Path, root: Path | None = None) -> set[str]:
    """Package modules that the file ``path`` imports, anywhere in it (imports inside functions too), with
    every parent package (importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first).

    ``from a import b`` names ``a`` and, when it is a module, ``a.b``. Relative imports are resolved from
    the file's place under ``root`` (default: this package's directory); a file outside the package (a
    stage script) has none. Only modules that exist under ``root`` are returned. The one import walker:
    the training checkpoint key (:func:`source_digest`) and ``tests/test_dvc_deps.py`` both use it.
    """
    root = root or ROOT
    try:
        package = list(path.resolve().relative_to(root.resolve().parent).parent.parts)
    except ValueError:
        package = []
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            anchor = package[: len(package) - node.level + 1] if node.level else []
            base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    with_parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 2)}
    return {m for m in with_parents if m.split(".")[0] == PACKAGE and module_path(m, root) is not None}


def import_closure(modules: Iterable[str], root: Path | None = None) -> list[str]:
    """Every ``discovla`` module that importing ``modules`` imports (themselves and their packages included),
    read from the sources under ``root`` (default: this package)."""
    root = root or ROOT
    seen: set[str] = set()
    todo = [".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 2)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_path(name, root)
        if path is None:
            raise ModuleNotFoundError(f"no module {name} in {root}")
        seen.add(name)
        todo.extend(file_imports(path, root) - seen)
    return sorted(seen)


def source_digest(modules: Iterable[str], root: Path | None = None) -> str:
    """sha256 over the names and source bytes of the import closure of ``modules``."""
    h = hashlib.sha256()
    for name in import_closure(modules, root):
        h.update(name.encode() + b"\0" + module_path(name, root).read_bytes() + b"\0")  # type: ignore[union-attr]
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of one file's bytes (hex), streamed."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def combine_file_digests(digests: dict[str, str]) -> str:
    """sha256 over (name, file sha256) pairs in sorted name order: :func:`files_digest` from per-file digests
    recorded earlier (a cache manifest), without reading the files again."""
    h = hashlib.sha256()
    for name in sorted(digests, key=lambda n: Path(n).parts):
        h.update(name.encode() + b"\0")
        h.update(bytes.fromhex(digests[name]))
    return h.hexdigest()


def files_digest(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """sha256 over (relative name, bytes) of each file, in sorted order."""
    return combine_file_digests(
        {
            (str(Path(p).relative_to(root)) if root is not None else Path(p).name): file_sha256(p)
            for p in paths
        }
    )


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
