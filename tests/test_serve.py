"""The search service (`discovla serve`): JSON API, files it serves (and never serves), the page in a real
browser; `discovla search --queries` (many queries, one process); `discovla index --ann`."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import synthetic_features
from fastapi.testclient import TestClient
from helpers.search import FRAMES, make_clip, train_adapters
from typer.testing import CliRunner

from discovla.artifacts.index import VideoIndexError, read_index, write_index
from discovla.cli import app as cli
from discovla.retriever import Retriever
from discovla.serve import create_app, load_indexes

QUERY = "a red circle slides to the left"
SECRET = "do-not-serve-this-secret"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny trained adapters, three clips, an index with the adapters and one zero-shot, a secret file."""
    root = tmp_path_factory.mktemp("serve")
    adapters = train_adapters(root, synthetic_features(n_train=16, n_test=6, frames=FRAMES, size=32))
    clips = root / "clips"
    for name in ("red", "blue", "bars"):
        make_clip(clips / f"{name}.mp4", name)
    (root / "secret.txt").write_text(SECRET)
    (clips / "secret.txt").write_text(SECRET)
    for out, extra in (("idx", []), ("idx-zs", ["--zeroshot"])):
        res = CliRunner().invoke(
            cli, ["index", str(clips), "--out", str(root / out), "--adapters", str(adapters), *extra]
        )
        assert res.exit_code == 0, res.output
    served = load_indexes([root / "idx", root / "idx-zs"], adapters, device="cpu")
    return {"root": root, "adapters": adapters, "clips": clips, "served": served}


@pytest.fixture(scope="module")
def client(world: dict) -> TestClient:
    return TestClient(create_app(world["served"]))


# ------------------------------------------------------------------------------------------ the API


def test_search_answers_the_k_best_videos_as_the_retriever_does(world: dict, client: TestClient) -> None:
    res = client.get("/api/search", params={"q": QUERY, "k": 2})
    assert res.status_code == 200
    body = res.json()
    assert body["index"] == "idx" and body["k"] == 2 and not body["zeroshot"] and not body["approximate"]
    want = Retriever.load(world["adapters"], device="cpu").search(QUERY, 2, index=world["root"] / "idx")
    assert [(h["rank"], h["video_id"]) for h in body["hits"]] == [(h.rank, h.video_id) for h in want]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in want], abs=1e-5)
    index = read_index(world["root"] / "idx")
    row = index.video_ids.index(body["hits"][0]["video_id"])
    assert body["hits"][0]["video"] == f"/api/video/idx/{row}"
    # POST with a JSON body answers the same
    posted = client.post("/api/search", json={"q": QUERY, "k": 2})
    assert posted.status_code == 200 and posted.json()["hits"] == body["hits"]
    listed = client.get("/api/indexes").json()
    assert [(i["name"], i["videos"], i["zeroshot"]) for i in listed] == [
        ("idx", 3, False),
        ("idx-zs", 3, True),
    ]


def test_zero_shot_queries_go_to_the_zero_shot_index(world: dict, client: TestClient) -> None:
    body = client.get("/api/search", params={"q": QUERY, "k": 3, "zeroshot": "true"}).json()
    assert body["index"] == "idx-zs" and body["zeroshot"]
    want = Retriever.load(world["adapters"], device="cpu", zeroshot=True).search(
        QUERY, 3, index=world["root"] / "idx-zs"
    )
    assert [h["video_id"] for h in body["hits"]] == [h.video_id for h in want]
    res = client.get("/api/search", params={"q": QUERY, "index": "idx", "zeroshot": "true"})
    assert res.status_code == 409 and "zero-shot" in res.json()["detail"]


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"q": ""}, 400, "empty query"),
        ({"q": "   "}, 400, "empty query"),
        ({"q": "x" * 1001}, 400, "at most 1000"),
        ({"q": QUERY, "k": 0}, 422, ""),
        ({"q": QUERY, "k": 101}, 422, ""),
        ({"q": QUERY, "k": "many"}, 422, ""),
        ({"q": QUERY, "index": "nope"}, 404, "unknown index 'nope'"),
    ],
)
def test_bad_requests_get_a_status_and_a_reason(
    client: TestClient, params: dict, status: int, says: str
) -> None:
    res = client.get("/api/search", params=params)
    assert res.status_code == status
    assert says in json.dumps(res.json()["detail"])


def test_an_index_of_another_model_is_refused_at_start(world: dict, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    index = read_index(world["root"] / "idx")
    index.meta["model"] = {**index.meta["model"], "adapters_digest": "f" * 64}
    write_index(foreign, index)
    with pytest.raises(VideoIndexError, match="computed with another model"):
        load_indexes([foreign], world["adapters"], device="cpu")
    for bad, says in ((foreign, "computed with another model"), (tmp_path / "none", "is not a video index")):
        res = CliRunner().invoke(cli, ["serve", "--index", str(bad), "--adapters", str(world["adapters"])])
        assert res.exit_code == 2
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("error: ") and says in line


def test_serve_binds_to_localhost_by_default() -> None:
    res = CliRunner().invoke(cli, ["serve", "--help"], terminal_width=200)
    assert res.exit_code == 0 and "[default: 127.0.0.1]" in res.stdout


# ------------------------------------------------------------------------------------------ files


def test_videos_and_frame_strips_are_served_by_row(world: dict, client: TestClient) -> None:
    index = read_index(world["root"] / "idx")
    row = index.video_ids.index("red")
    res = client.get(f"/api/video/idx/{row}")
    assert res.status_code == 200 and res.headers["content-type"] == "video/mp4"
    assert res.content == Path(index.paths[row]).read_bytes()
    part = client.get(f"/api/video/idx/{row}", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100  # players can seek
    strip = client.get(f"/api/frames/idx/{row}")
    assert strip.status_code == 200 and strip.content[:2] == b"\xff\xd8"  # JPEG
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(strip.content))
    assert img.size == (6 * 96, 96)
    red = img.convert("RGB").getpixel((48, 48))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # the red clip's frames
    assert (
        client.get("/api/video/idx/3").status_code == 404
        and client.get("/api/video/idx/-1").status_code == 404
    )


def test_no_file_outside_the_index_is_reachable(world: dict, client: TestClient, tmp_path: Path) -> None:
    root = world["root"]
    attempts = [
        "/api/video/idx/../../secret.txt",
        "/api/video/idx/..%2f..%2fsecret.txt",
        "/api/video/..%2f..%2fsecret.txt/0",
        f"/api/video/idx/{root}/secret.txt",
        f"/api/video/idx/%2F{str(root / 'secret.txt').lstrip('/').replace('/', '%2F')}",
        "/api/frames/idx/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/video/idx/0/../../../secret.txt",
        "/api/video/%2e%2e/0",
        "/../secret.txt",
        "/%2e%2e/%2e%2e/secret.txt",
        "/static/../secret.txt",
        "/api/video/idx/0?path=../secret.txt",
        "/clips/secret.txt",
        "/secret.txt",
        "/etc/passwd",
    ]
    for url in attempts:
        res = client.get(url)
        assert SECRET not in res.text and "root:" not in res.text, url
        assert res.status_code in (200, 404, 422) and (
            res.status_code != 200 or res.headers["content-type"] == "video/mp4"
        ), url
    # an index row whose recorded path is not a video is not served either (even when the file exists)
    doctored = read_index(root / "idx")
    doctored.paths[0] = str(root / "secret.txt")
    write_index(tmp_path / "doctored", doctored)
    served = load_indexes([tmp_path / "doctored"], world["adapters"], device="cpu")
    res = TestClient(create_app(served)).get("/api/video/doctored/0")
    assert res.status_code == 404 and SECRET not in res.text


# ------------------------------------------------------------------------------------------ the page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_the_page_in_a_browser(world: dict, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no chromium found (apt-get install chromium): the page is not driven in a browser")
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(world["served"]), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"], headless=True)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#index option", state="attached")
            page.select_option("#k", "5")
            page.fill("#q", QUERY)
            page.press("#q", "Enter")
            page.wait_for_selector(".hit")
            shown = page.eval_on_selector_all(".hit", "els => els.map(e => e.dataset.videoId)")
            want = TestClient(create_app(world["served"])).get("/api/search", params={"q": QUERY, "k": 5})
            assert shown == [h["video_id"] for h in want.json()["hits"]]  # all 3 videos, in order
            assert "score" in page.inner_text(".hit") and "3 videos of idx" in page.inner_text("#status")
            page.wait_for_function(
                "[...document.querySelectorAll('.strip')].every(i => i.complete && i.naturalWidth === 576)"
            )
            page.screenshot(path=str(tmp_path / "page.png"))
            page.click(".hit >> nth=0")  # opens the video, from its start
            page.wait_for_function("document.getElementById('video').readyState >= 1")
            src = page.eval_on_selector("#video", "v => v.src")
            assert src.endswith(want.json()["hits"][0]["video"])
            assert page.eval_on_selector("#video", "v => v.duration") == pytest.approx(1.0, abs=0.2)
            assert page.eval_on_selector("#video", "v => v.currentTime") < 0.5
            # an empty query searches nothing; a bad index in the URL shows the service's reason
            page.goto(f"http://127.0.0.1:{port}/?q=cats&index=nope")
            page.wait_for_selector("#status .err")
            assert "unknown index" in page.inner_text("#status")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ------------------------------------------------------------------------------------------ the CLI


def test_search_answers_many_queries_in_one_process(world: dict, tmp_path: Path) -> None:
    queries = tmp_path / "queries.txt"
    queries.write_text(f"{QUERY}\n\n" + json.dumps({"query": "blue", "k": 1, "id": 7}) + "\nstripes\n")
    args = ["search", "--index", str(world["root"] / "idx"), "--adapters", str(world["adapters"]), "--k", "2"]
    res = CliRunner().invoke(cli, [*args, "--queries", str(queries)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [line["query"] for line in lines] == [QUERY, "blue", "stripes"] and lines[1]["id"] == 7
    assert [len(line["hits"]) for line in lines] == [2, 1, 2]
    r = Retriever.load(world["adapters"], device="cpu")
    for line in lines:
        want = r.search(line["query"], len(line["hits"]), index=world["root"] / "idx")
        assert [h["video_id"] for h in line["hits"]] == [h.video_id for h in want]
    piped = CliRunner().invoke(cli, [*args, "--queries", "-"], input=queries.read_text())
    assert piped.exit_code == 0 and piped.stdout == res.stdout  # stdin reads alike
    bad = CliRunner().invoke(cli, [*args, "--queries", "-"], input='{"query": ""}\n')
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --queries line 1")
    both = CliRunner().invoke(cli, [*args, QUERY, "--queries", str(queries)])
    assert both.exit_code == 2 and "one of the two" in both.stderr


def test_index_ann_builds_keeps_and_drops_the_approximate_index(world: dict, tmp_path: Path) -> None:
    out = tmp_path / "ann-index"
    base = ["index", str(world["clips"]), "--out", str(out), "--adapters", str(world["adapters"])]
    res = CliRunner().invoke(cli, [*base, "--ann", "ivf", "--nlist", "1"])
    assert res.exit_code == 0 and "approximate index ivf" in res.stdout, res.output
    assert (out / "ann.faiss").is_file() and json.loads((out / "ann.json").read_text())["params"][
        "nlist"
    ] == 1
    # a re-run (nothing new to embed) keeps the approximate index and its trained cells
    res = CliRunner().invoke(cli, [*base])
    assert res.exit_code == 0 and "reused 3" in res.stdout and "approximate index ivf" in res.stdout
    assert json.loads((out / "ann.json").read_text())["reused_training"]
    # one cell: the approximate answer is the exact one; the service says it is approximate
    served = load_indexes([out], world["adapters"], device="cpu")
    body = TestClient(create_app(served)).get("/api/search", params={"q": QUERY, "k": 3}).json()
    exact = (
        TestClient(create_app(served)).get("/api/search", params={"q": QUERY, "k": 3, "exact": True}).json()
    )
    assert body["approximate"] and not exact["approximate"]
    assert [h["video_id"] for h in body["hits"]] == [h["video_id"] for h in exact["hits"]]
    res = CliRunner().invoke(cli, [*base, "--ann", "exact"])
    assert res.exit_code == 0 and not (out / "ann.faiss").exists()
    res = CliRunner().invoke(cli, [*base, "--nprobe", "3"])
    assert res.exit_code == 2 and "need --ann" in res.stderr
