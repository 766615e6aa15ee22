"""A resident search service (``discovla serve --index DIR``): the model loaded once, a JSON API and a page.

:func:`load_indexes` reads each index and loads the model that made it once (the adapters of ``--adapters``,
with or without them: an index records its model's adapters digest and zero-shot flag, and one made by any
other model is refused, as ``discovla search`` refuses it). :func:`create_app` answers:

- ``GET /``: the page. A query box, k, the index (and zero-shot, when both kinds are served); the top-k
  videos as frame strips with their scores; a click plays the video from its start.
- ``GET /api/indexes``: the served indexes (name, videos, zero-shot, approximate kind).
- ``GET /api/search?q=TEXT&k=5[&index=NAME][&zeroshot=true][&exact=true]`` (or ``POST /api/search`` with
  the same fields as JSON): ``{"query", "index", "k", "zeroshot", "approximate", "took_ms", "hits": [{"rank",
  "video_id", "score", "path", "frames", "video"}]}``. 400: an empty or over-long query; 404: an unknown
  index; 409: zero-shot asked of an index made with the adapters (or the reverse); 422: a malformed field.
- ``GET /api/frames/{index}/{row}``: a JPEG strip of frames sampled from the video of that row.
- ``GET /api/video/{index}/{row}``: the video file of that row (HTTP ranges, so players can seek).

Files are named by row number only, never by a path from the request: the only files ever served are the
video paths the index records (a relative one from the working directory), and each must still be a
regular file with a video extension. The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import functools
import io
import mimetypes
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discovla.artifacts.index import VideoIndex, VideoIndexError, check_model, describe_model, read_index
from discovla.data.folder import VIDEO_EXTS
from discovla.retriever import Retriever

MAX_QUERY_CHARS = 1000
MAX_K = 100
STRIP_FRAMES = 6
STRIP_SIZE = 96
STRIP_CACHE = 512


@dataclass
class Served:
    """One served index: its name in URLs, directory, contents and the model that searches it."""

    name: str
    path: Path
    index: VideoIndex
    retriever: Retriever

    @property
    def zeroshot(self) -> bool:
        return bool((self.index.meta.get("model") or {}).get("zeroshot"))

    @functools.cached_property
    def rows(self) -> dict[str, int]:
        """``video_id -> row`` (URLs name videos by row)."""
        return {v: i for i, v in enumerate(self.index.video_ids)}


def load_indexes(
    index_dirs: list[str | Path],
    adapters: str | Path = "models/discovla",
    *,
    pretrained: str | None = None,
    device: str = "auto",
) -> list[Served]:
    """Each index of ``index_dirs`` with the model that made it (loaded once per zero-shot flag); raises
    :class:`VideoIndexError` for a directory that is not an index or was made by another model."""
    if not index_dirs:
        raise VideoIndexError("no index to serve: pass --index DIR (built with `discovla index`)")
    models: dict[bool, Retriever] = {}
    served: list[Served] = []
    names: set[str] = set()
    for d in index_dirs:
        path = Path(d)
        index = read_index(path)
        zeroshot = bool((index.meta.get("model") or {}).get("zeroshot"))
        if zeroshot not in models:
            models[zeroshot] = Retriever.load(
                adapters, device=device, zeroshot=zeroshot, pretrained=pretrained
            )
        check_model(index, models[zeroshot].identity, path)
        name = path.resolve().name or "index"
        base, i = name, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.add(name)
        served.append(Served(name, path, index, models[zeroshot]))
        _ = served[-1].rows  # built now, not on the first request
    return served


class SearchError(Exception):
    """A request the service cannot answer: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def pick_index(served: list[Served], name: str | None, zeroshot: bool | None) -> Served:
    """The index called ``name`` (404 if none), else the first whose zero-shot flag is ``zeroshot`` (the
    first of all when ``zeroshot`` is None); 409 when the named one was made by the other kind of model."""
    if name:
        found = next((s for s in served if s.name == name), None)
        if found is None:
            known = ", ".join(s.name for s in served)
            raise SearchError(404, f"unknown index {name!r}: this service has {known}")
        if zeroshot is not None and found.zeroshot != zeroshot:
            raise SearchError(
                409,
                f"index {name!r} was computed with {describe_model(found.index.meta.get('model') or {})}"
                f"; zero-shot={zeroshot} queries need an index of that model",
            )
        return found
    for s in served:
        if zeroshot is None or s.zeroshot == zeroshot:
            return s
    kind = "zero-shot" if zeroshot else "adapted"
    raise SearchError(
        404, f"no {kind} index is served (discovla index ...{' --zeroshot' if zeroshot else ''})"
    )


def video_file(served: Served, row: int) -> Path:
    """The video file of ``row`` of ``served``'s index, checked (:class:`SearchError` 404 otherwise)."""
    if not 0 <= row < len(served.index):
        raise SearchError(404, f"index {served.name!r} has no video {row}")
    recorded = served.index.paths[row]
    if not recorded:
        raise SearchError(404, f"the index does not know the file of video {served.index.video_ids[row]!r}")
    path = Path(recorded).resolve()
    if not path.is_file() or path.suffix.lower() not in VIDEO_EXTS:
        where = ""
        if not Path(recorded).is_absolute():
            where = (
                f" (recorded as {recorded}, relative to the directory the server runs in: start it where"
                " the index was built, e.g. the repository root)"
            )
        raise SearchError(404, f"the video file of {served.index.video_ids[row]!r} is gone{where}")
    return path


def _strip_jpeg(path: Path) -> bytes:
    """``STRIP_FRAMES`` frames of ``path`` side by side, ``STRIP_SIZE`` px high, as JPEG."""
    import numpy as np
    from PIL import Image

    from discovla.sampling import VideoError, sample_frames

    try:
        frames = sample_frames(path, STRIP_FRAMES, STRIP_SIZE, timeout=30.0).frames
    except VideoError as exc:
        raise SearchError(404, f"{path.name}: {exc.reason}") from None
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(list(frames), axis=1)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def run_search(
    served: list[Served],
    lock: threading.Lock,
    q: str,
    k: int,
    index: str | None,
    zeroshot: bool | None,
    exact: bool,
) -> dict[str, Any]:
    """The answer of ``/api/search`` (see the module doc)."""
    text = (q or "").strip()
    if not text:
        raise SearchError(400, "empty query: say what to look for (q=...)")
    if len(text) > MAX_QUERY_CHARS:
        raise SearchError(400, f"query of {len(text)} characters: at most {MAX_QUERY_CHARS}")
    s = pick_index(served, index, zeroshot)
    t0 = time.perf_counter()
    with lock:  # one forward pass at a time: the model is shared
        hits = s.retriever.search(text, k, index=s.index, exact=exact)
    took = 1000 * (time.perf_counter() - t0)
    rows = s.rows
    return {
        "query": text,
        "index": s.name,
        "k": k,
        "zeroshot": s.zeroshot,
        "approximate": s.index.ann is not None and not exact,
        "took_ms": round(took, 3),
        "hits": [
            {
                "rank": h.rank,
                "video_id": h.video_id,
                "score": round(h.score, 6),
                "path": h.path,
                "frames": f"/api/frames/{s.name}/{rows[h.video_id]}" if h.path else None,
                "video": f"/api/video/{s.name}/{rows[h.video_id]}" if h.path else None,
            }
            for h in hits
        ],
    }


def create_app(served: list[Served]) -> Any:
    """The FastAPI application serving ``served`` (see the module doc)."""
    from fastapi import Body, FastAPI, Query
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

    app = FastAPI(title="DiscoVLA search", docs_url="/api/docs", openapi_url="/api/openapi.json")
    lock = threading.Lock()
    strips: OrderedDict[tuple[str, int], bytes] = OrderedDict()
    strips_lock = threading.Lock()

    @app.exception_handler(SearchError)
    def _error(_request: Any, exc: SearchError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/indexes")
    def indexes() -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "videos": len(s.index),
                "zeroshot": s.zeroshot,
                "approximate": s.index.ann.params.kind if s.index.ann is not None else None,
                "model": describe_model(s.index.meta.get("model") or {}),
            }
            for s in served
        ]

    @app.get("/api/search")
    def search_get(
        q: str = Query("", max_length=10 * MAX_QUERY_CHARS),
        k: int = Query(5, ge=1, le=MAX_K),
        index: str | None = None,
        zeroshot: bool | None = None,
        exact: bool = False,
    ) -> dict[str, Any]:
        return run_search(served, lock, q, k, index, zeroshot, exact)

    @app.post("/api/search")
    def search_post(
        q: str = Body("", embed=True, max_length=10 * MAX_QUERY_CHARS),
        k: int = Body(5, embed=True, ge=1, le=MAX_K),
        index: str | None = Body(None, embed=True),
        zeroshot: bool | None = Body(None, embed=True),
        exact: bool = Body(False, embed=True),
    ) -> dict[str, Any]:
        return run_search(served, lock, q, k, index, zeroshot, exact)

    def _served(name: str) -> Served:
        return pick_index(served, name, None)

    @app.get("/api/frames/{name}/{row}")
    def frames(name: str, row: int) -> Response:
        s = _served(name)
        key = (s.name, row)
        with strips_lock:
            jpeg = strips.get(key)
            if jpeg is not None:
                strips.move_to_end(key)
        if jpeg is None:
            jpeg = _strip_jpeg(video_file(s, row))  # ffmpeg, outside the lock
            with strips_lock:
                strips[key] = jpeg
                while len(strips) > STRIP_CACHE:
                    strips.popitem(last=False)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/video/{name}/{row}")
    def video(name: str, row: int) -> FileResponse:
        path = video_file(_served(name), row)
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media)

    return app


def serve(
    served: list[Served], host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"
) -> None:
    """Run the service until interrupted (uvicorn, one process)."""
    import uvicorn

    uvicorn.run(create_app(served), host=host, port=port, log_level=log_level)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DiscoVLA search</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}
header{padding:14px 20px;background:#fff;border-bottom:1px solid #ddd;display:flex;gap:10px;
align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0 12px 0 0}
#q{flex:1;min-width:260px;font-size:16px;padding:7px 10px}
select,button,input{font-size:15px;padding:6px 8px}
#status{padding:8px 20px;color:#666;font-size:14px}
#hits{list-style:none;margin:0;padding:0 20px 20px}
.hit{display:flex;gap:14px;align-items:center;background:#fff;border:1px solid #e2e2e2;border-radius:6px;
padding:8px 12px;margin:8px 0;cursor:pointer}
.hit:hover{border-color:#888}
.rank{font-weight:700;width:2em;text-align:right}
.meta{min-width:220px}.vid{font-family:monospace}.score{color:#555;font-size:14px}
.strip{height:72px;image-rendering:auto;border-radius:3px;background:#ddd}
#player{position:fixed;inset:0;background:rgba(0,0,0,.75);display:none;align-items:center;
justify-content:center;flex-direction:column;gap:8px}
#player video{max-width:90vw;max-height:80vh;background:#000}
#player p{color:#fff;margin:0}
.err{color:#b00}
</style></head>
<body>
<header><h1>DiscoVLA search</h1>
<form id="f"><input id="q" name="q" placeholder="a red circle slides to the left" autofocus>
<label>k <select id="k"><option>5</option><option selected>10</option><option>20</option><option>50</option>
</select></label>
<select id="index" title="index"></select>
<button type="submit">Search</button></form></header>
<div id="status">Type what to look for and press Enter.</div>
<ol id="hits"></ol>
<div id="player" role="dialog"><video id="video" controls autoplay playsinline></video><p id="playing"></p>
<button id="close">Close</button></div>
<script>
const $ = (id) => document.getElementById(id);
let indexes = [];
async function loadIndexes() {
  indexes = await (await fetch('/api/indexes')).json();
  for (const ix of indexes) {
    const o = document.createElement('option');
    o.value = ix.name;
    o.textContent = `${ix.name} (${ix.videos} videos${ix.zeroshot ? ', zero-shot' : ''}` +
      `${ix.approximate ? ', ' + ix.approximate : ''})`;
    $('index').appendChild(o);
  }
}
function play(hit) {
  const v = $('video');
  v.src = hit.video;
  v.currentTime = 0;
  $('playing').textContent = `${hit.rank}. ${hit.video_id} (score ${hit.score.toFixed(4)})`;
  $('player').style.display = 'flex';
  v.play().catch(() => {});
}
$('close').onclick = () => {
  $('video').pause(); $('video').removeAttribute('src'); $('player').style.display = 'none';
};
async function search(q) {
  const params = new URLSearchParams({q, k: $('k').value, index: $('index').value});
  history.replaceState(null, '', '?' + params);
  $('status').textContent = 'Searching...';
  const r = await fetch('/api/search?' + params);
  const body = await r.json();
  $('hits').innerHTML = '';
  if (!r.ok) {
    $('status').innerHTML = '';
    const e = document.createElement('span'); e.className = 'err';
    e.textContent = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
    $('status').appendChild(e);
    return;
  }
  $('status').textContent = `${body.hits.length} videos of ${body.index} in ${body.took_ms.toFixed(1)} ms` +
    (body.approximate ? ' (approximate)' : '');
  for (const h of body.hits) {
    const li = document.createElement('li'); li.className = 'hit';
    li.dataset.videoId = h.video_id;
    const rank = document.createElement('span'); rank.className = 'rank'; rank.textContent = h.rank;
    const meta = document.createElement('div'); meta.className = 'meta';
    const vid = document.createElement('div'); vid.className = 'vid'; vid.textContent = h.video_id;
    const sc = document.createElement('div'); sc.className = 'score';
    sc.textContent = 'score ' + h.score.toFixed(4);
    meta.append(vid, sc);
    li.append(rank, meta);
    if (h.frames) {
      const img = document.createElement('img'); img.className = 'strip'; img.loading = 'lazy';
      img.src = h.frames; img.alt = 'frames of ' + h.video_id; li.appendChild(img);
      li.onclick = () => play(h);
    } else { li.title = 'no video file recorded'; }
    $('hits').appendChild(li);
  }
}
$('f').onsubmit = (e) => { e.preventDefault(); const q = $('q').value.trim(); if (q) search(q); };
loadIndexes().then(() => {
  const p = new URLSearchParams(location.search);
  const want = p.get('index');
  if (want && !indexes.some((ix) => ix.name === want)) {  // a stale link: let the service say why
    const o = document.createElement('option'); o.value = o.textContent = want; $('index').appendChild(o);
  }
  if (want) $('index').value = want;
  if (p.get('k')) $('k').value = p.get('k');
  if (p.get('q')) { $('q').value = p.get('q'); search(p.get('q')); }
});
</script></body></html>
"""
