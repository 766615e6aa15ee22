"""Directory manifests: a large artifact's content digest, recorded once when it is written, checked cheaply.

Hashing an 18 GB feature cache on every load costs more than the work that follows it. The writer records,
in ``manifest.json`` inside the directory (written last), every file's size, modification time and sha256,
and the directory's content digest (:func:`discovla.provenance.files_digest` of those files, computed from
the recorded per-file digests). A reader then checks the files as DVC's own state does:

- every file of the manifest is there with its recorded size, and no other file is (else an error);
- a file whose modification time is the recorded one (or the one recorded beside the directory the last
  time it was verified, below) is taken as unchanged without reading it;
- any other file (copied, checked out by DVC, touched) is hashed once; a changed byte is an error naming
  the file, and a match is remembered in ``.<name>.verified.json`` NEXT TO the directory (size, mtime and
  inode per file; never inside the artifact, whose bytes DVC tracks), so the next load is cheap again.

``verify=True`` hashes every file whatever the times say (``discovla verify``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from discovla.errors import DiscoVLAError
from discovla.io import write_json
from discovla.provenance import combine_file_digests, file_sha256

MANIFEST = "manifest.json"
FORMAT = 1


class ManifestError(DiscoVLAError, ValueError):
    """A directory whose files do not match its manifest (or that has none), with what to rerun."""


def _files(path: Path) -> list[Path]:
    return sorted(f for f in path.iterdir() if f.is_file() and f.name != MANIFEST)


def write_manifest(path: str | Path) -> dict[str, Any]:
    """Hash every file of the directory ``path`` and write its ``manifest.json``; return the manifest.
    Call it last, when no other file of the directory will change."""
    path = Path(path)
    files = {}
    for f in _files(path):
        st = f.stat()
        files[f.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(f)}
    manifest = {
        "format": FORMAT,
        "digest": combine_file_digests({n: e["sha256"] for n, e in files.items()}),
        "files": files,
    }
    write_json(path / MANIFEST, manifest)
    return manifest


def read_manifest(path: str | Path, rerun: str) -> dict[str, Any]:
    """The manifest of ``path``; :class:`ManifestError` (saying ``rerun``) when missing or unreadable."""
    file = Path(path) / MANIFEST
    try:
        manifest = json.loads(file.read_text())
    except FileNotFoundError:
        raise ManifestError(f"{file} not found (written by an older version?): {rerun}") from None
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{file} is unreadable ({exc}): {rerun}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise ManifestError(f"{file} is not a format-{FORMAT} manifest: {rerun}")
    return manifest


def _state_file(path: Path) -> Path:
    return path.parent / f".{path.name}.verified.json"


def _read_state(path: Path, digest: str) -> dict[str, list[int]]:
    try:
        state = json.loads(_state_file(path).read_text())
    except (OSError, ValueError):
        return {}
    return state.get("files", {}) if isinstance(state, dict) and state.get("digest") == digest else {}


def check_manifest(path: str | Path, rerun: str, verify: bool = False) -> str:
    """The recorded content digest of the directory ``path`` after checking its files against its manifest
    (see the module docstring); ``verify``: hash every file. :class:`ManifestError` names the first file
    that differs and says ``rerun``."""
    path = Path(path)
    manifest = read_manifest(path, rerun)
    recorded: dict[str, dict[str, Any]] = manifest["files"]
    present = {f.name: f for f in _files(path)}
    missing, foreign = sorted(set(recorded) - set(present)), sorted(set(present) - set(recorded))
    if missing:
        raise ManifestError(f"{path}/{missing[0]} is missing: {rerun}")
    if foreign:
        raise ManifestError(f"{path}/{foreign[0]} is not in {MANIFEST} (a foreign file?): {rerun}")
    state = _read_state(path, manifest["digest"])
    stats = {name: present[name].stat() for name in sorted(recorded)}
    verified: dict[str, list[int]] = {}
    for name, entry in recorded.items():
        st = stats[name]
        if st.st_size != entry["size"]:
            raise ManifestError(
                f"{path}/{name} has {st.st_size:,} bytes, its manifest {entry['size']:,} (damaged): {rerun}"
            )
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        unchanged = st.st_mtime_ns == entry["mtime_ns"] or state.get(name) == stamp
        if verify or not unchanged:
            if file_sha256(present[name]) != entry["sha256"]:
                raise ManifestError(f"{path}/{name} differs from its manifest (damaged): {rerun}")
        verified[name] = stamp
    if verified != state and any(stats[n].st_mtime_ns != e["mtime_ns"] for n, e in recorded.items()):
        try:  # remember the verified times next to the directory; a read-only place just stays slow
            write_json(_state_file(path), {"digest": manifest["digest"], "files": verified})
        except OSError:
            pass
    return str(manifest["digest"])
