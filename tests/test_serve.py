"""``textmask serve`` against real servers on 127.0.0.1 sockets.

``server`` is ``python -m textmask serve`` in a subprocess (small limits): the API, its errors, the parity with
the CLI, the web page in a browser. ``held`` is another such subprocess whose engine calls wait while a gate
file exists (tests/gated_textmask.py): the graceful stop (SIGTERM) with requests in flight. ``gated`` is the same app
under uvicorn in a thread, with an API key and a session whose engine calls the test can hold: the batcher's
behaviour (batching, a full queue, a client that has gone) is then checked without depending on timing.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from cli_helpers import GATED, ROOT, SRC, invoke  # noqa: E402

EXAMPLE = ROOT / "examples" / "images" / "cat-on-lawn.png"
KEY = "test-key-123"
MAX_PIXELS = 3_000_000
QUEUE = 4  # the in-process server's


# ------------------------------------------------------------------------------------------- helpers
def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(height: int, width: int, seed: int, channels: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (height, width, channels), dtype=np.uint8))


def gradient_png(height: int, width: int) -> bytes:
    """A large image that compresses to a small upload (for the pixel limit and slow requests)."""
    row = np.linspace(0, 255, width, dtype=np.uint8)
    return png_bytes(np.repeat(np.stack([row, row[::-1], row], axis=-1)[None], height, axis=0))


SMALL = noise_png(40, 56, seed=1)


class Server:
    """A ``python -m textmask serve`` subprocess; its log goes to a file (shown when something fails).

    With ``gate`` it runs through tests/gated_textmask.py: engine calls wait while that file exists. ``hold_loading``
    creates it first, so the warm-up (part of loading) waits until :meth:`wait_ready` has seen a 503 "loading"."""

    def __init__(self, model: Path, log: Path, *args: str, gate: Path | None = None, hold_loading: bool = False):
        self.url = ""  # known once uvicorn says which port it bound (--port 0: no port taken from under us)
        self.log_path = log
        self.gate = gate
        if hold_loading:
            assert gate is not None
            gate.touch()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
        launcher = ["-m", "textmask"] if gate is None else [str(GATED), str(gate), "0"]
        command = [sys.executable, *launcher, "serve", "--model", str(model), "--port", "0", *args]
        self._log = open(log, "wb")  # closed in stop()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.saw_loading: list[httpx.Response] = []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            if not self.url:
                bound = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", self.log())
                if bound is None:
                    time.sleep(0.05)
                    continue
                self.url = bound.group(1)
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                return
            self.saw_loading.append(response)
            if self.gate is not None and self.gate.exists():
                self.gate.unlink()  # seen loading: let the warm-up finish
            time.sleep(0.05)
        raise AssertionError(f"the server was not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        self._log.close()


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """Started together, so that their interpreters start side by side: the server, one whose model is missing, and
    the held one. ``server`` holds its warm-up until a 503 "loading" is seen, however fast this machine loads."""
    logs = tmp_path_factory.mktemp("serve-logs")
    started = {
        "server": Server(tiny_model_dir, logs / "server.log", "--max-upload-mb", "1", "--max-pixels",
                         str(MAX_PIXELS), "--shutdown-timeout", "60", gate=logs / "loading", hold_loading=True),
        "missing": Server(logs / "no-such-model", logs / "missing.log"),
        "held": Server(tiny_model_dir, logs / "held.log", "--shutdown-timeout", "60", gate=logs / "gate"),
    }  # fmt: skip
    try:
        started["server"].wait_ready()
        started["held"].wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def server(servers: dict[str, Server]) -> Server:
    return servers["server"]


class GatedSession:
    """A session whose engine calls wait while ``gate`` is closed (``entered`` says one is waiting); it records
    the size of every call."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.batcher: Any = None  # the server's MicroBatcher (set by the fixture), to see what it has queued

    def queued(self) -> int:
        """Requests submitted to the batcher and not yet taken by the engine."""
        return len(self.batcher._queue)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def mask_requests(self, requests: Any, **kwargs: Any) -> Any:
        self.calls.append(len(requests))
        if not self.gate.is_set():
            self.entered.set()
            assert self.gate.wait(120), "the test never opened the gate"
        return self.session.mask_requests(requests, **kwargs)


@pytest.fixture(scope="module")
def gated(tiny_session: Any) -> Iterator[tuple[str, GatedSession]]:
    """The app under uvicorn in a thread (a real socket), with an API key, a queue of 4, batches of up to 4, and an
    idle engine that waits 100 ms for company (wide enough for simultaneous clients on a loaded machine)."""
    import uvicorn

    from textmask.serve import ServeConfig, create_app

    session = GatedSession(tiny_session)
    listening = socket.socket()  # bound here and handed to uvicorn: no port can be taken in between
    listening.bind(("127.0.0.1", 0))
    port = int(listening.getsockname()[1])
    config = ServeConfig(port=port, api_key=KEY, queue=QUEUE, max_batch=4, batch_wait_ms=100)
    app = create_app(config, session)
    session.batcher = app.state.service.batcher
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{url}/readyz"), 120, "the in-process server")
    yield url, session
    session.gate.set()
    server.should_exit = True
    thread.join(60)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def post_mask(http: httpx.Client, image: bytes = SMALL, name: str = "small.png", prompts: Any = ("a cat",),
              **fields: Any) -> httpx.Response:  # fmt: skip
    data: dict[str, Any] = {"prompt": list(prompts)} if prompts is not None else {}
    for key, value in fields.items():
        data[key] = value if isinstance(value, list) else str(value)
    return http.post("/v1/mask", files={"image": (name, image, "image/png")}, data=data)


def assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["code"] == code, error
    assert error["field"] == field, error
    assert error["message"]
    return error


def assert_good(http: httpx.Client) -> None:
    """A good request after a bad one still gets its mask."""
    response = post_mask(http)
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\x89PNG")


def metrics(http: httpx.Client, **headers: str) -> dict[str, float]:
    response = http.get("/metrics", headers=headers)
    assert response.status_code == 200
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def expected_png(session: Any, image: bytes, prompts: list[str], negatives: list[str] = (), kind: str = "mask",
                 bits: int = 8, **options: Any) -> bytes:  # fmt: skip
    """What the Python API gives for the same upload, rendered by the CLI's renderer."""
    from textmask.batch.job import render_png
    from textmask.images import read_image

    loaded = read_image("upload.png", data=image)
    mask = session.mask(loaded.levels, prompts, negative_prompts=list(negatives), **options)
    return render_png(kind, loaded, mask, bits)


def wait_for(condition: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ----------------------------------------------------------------------------------- probes, info
def test_probes_info_docs_and_metrics(server: Server, client: httpx.Client) -> None:
    # /readyz answered 503 (JSON, Retry-After) while the model loaded, then 200.
    assert server.saw_loading, "no /readyz answer came before the model was ready"
    early = server.saw_loading[0]
    assert_error(early, 503, "loading", None)
    assert int(early.headers["retry-after"]) > 0
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}

    info = client.get("/v1/info").json()
    assert info["version"] and info["device"] == "cpu" and info["dtype"] == "float32" and info["ready"]
    assert info["limits"]["max_pixels"] == MAX_PIXELS and info["limits"]["max_upload_bytes"] == 1024 * 1024
    assert info["outputs"] == ["mask", "cutout", "overlay", "json"] and info["url_fetching"] is False
    options = {option["name"]: option for option in info["options"]}
    from dataclasses import fields

    from textmask.postprocess import MaskOptions

    assert list(options) == [spec.name for spec in fields(MaskOptions)]  # every field, generically
    assert options["threshold"] == {**options["threshold"], "type": "number", "nullable": True, "default": None,
                                    "min": 0.0, "max": 1.0}  # fmt: skip
    assert options["normalize"]["choices"] == ["none", "minmax", "seed"]
    assert options["grow"]["type"] == "integer" and options["invert"]["type"] == "boolean"
    assert "blur" in options["blur"]["description"].lower() or "sigma" in options["blur"]["description"].lower()

    schema = client.get("/openapi.json").json()
    form = schema["paths"]["/v1/mask"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]] if "$ref" in form else form
    assert {"image", "prompt", "negative", "output", "bits", *options} <= set(form["properties"])
    assert form["required"] == ["image", "prompt"]
    docs = client.get("/docs")  # Swagger UI from the fastapi-swagger wheel: no CDN, so it works offline
    assert docs.status_code == 200 and "cdn." not in docs.text and "/docs/assets/swagger-ui-bundle.js" in docs.text
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and "javascript" in bundle.headers["content-type"] and len(bundle.content) > 1e5

    values = metrics(client)
    assert values["textmask_model_ready"] == 1
    assert values["process_resident_memory_bytes"] > 10_000_000
    assert 'textmask_http_requests_total{route="/readyz",status="503"}' in values
    assert "textmask_request_duration_seconds_count" in values and "textmask_batch_size_sum" in values
    assert "textmask_queue_depth" in values


def test_page_is_served_offline(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<title>textmask" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy  # nothing from elsewhere can load
    for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
        response = client.get(asset)
        assert response.status_code == 200 and response.content
        content = response.content.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")  # a name, not a fetch
        assert b"http://" not in content and b"https://" not in content
    assert "https://" not in page.text and "http://" not in page.text


# ------------------------------------------------------------------------------------- parity
PARITY = [
    # (CLI options, API fields, session options, kind, bits)
    ([], {}, {}, "mask", 8),
    (["-t", "0.5"], {"threshold": 0.5}, {"threshold": 0.5}, "mask", 8),
    (["--grow", "3"], {"grow": 3}, {"grow": 3}, "mask", 8),
    (["--blur", "2"], {"blur": 2}, {"blur": 2.0}, "mask", 8),
    (["--invert", "-t", "0.4"], {"invert": "true", "threshold": 0.4}, {"invert": True, "threshold": 0.4}, "mask", 8),
    (["-n", "the grass"], {"negative": ["the grass"]}, {}, "mask", 8),
    (["--bits", "16", "--feather", "3"], {"bits": 16, "feather": 3}, {"feather": 3.0}, "mask", 16),
    (["-k", "cutout", "--grow", "-2"], {"output": "cutout", "grow": -2}, {"grow": -2}, "cutout", 8),
    (["-k", "overlay"], {"output": "overlay"}, {}, "overlay", 8),
    (["--refine", "-t", "0.5"], {"refine": "true", "threshold": 0.5}, {"refine": True, "threshold": 0.5}, "mask", 8),
    (["--detail", "2x2"], {"detail": "2x2"}, {"detail": (2, 2)}, "mask", 8),
]


@pytest.fixture(scope="module")
def small_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example at half size (the option variants need no more pixels, and the machine is shared)."""
    path = tmp_path_factory.mktemp("images") / "cat-small.png"
    with Image.open(EXAMPLE) as image:
        image.resize((256, 192), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.mark.parametrize(("cli", "api", "options", "kind", "bits"), PARITY, ids=[str(i) for i in range(len(PARITY))])
def test_png_equals_the_cli_and_the_python_api(
    client: httpx.Client, tiny_model_dir: Path, tiny_session: Any, small_example: Path, tmp_path: Path, cli: list,
    api: dict, options: dict, kind: str, bits: int,
) -> None:  # fmt: skip
    prompts = ["a cat", "the sky"]
    path = EXAMPLE if not cli else small_example  # the default on the example itself
    image = path.read_bytes()
    response = post_mask(client, image, path.name, prompts=prompts, **api)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"] == f'inline; filename="{path.stem}.{kind}.png"'

    args = ["mask", str(path), "-p", prompts[0], "-p", prompts[1], "--combine", "union"]
    result = invoke(*args, *cli, "--model", str(tiny_model_dir), "-o", str(tmp_path), "-q")
    assert result.exit_code == 0, result.output
    suffix = ".png" if kind == "mask" else f".{kind}.png"
    written = [path for path in tmp_path.iterdir() if path.name.endswith(suffix) and path.name.count(".") ==
               (2 if kind == "mask" else 3)]  # fmt: skip
    assert len(written) == 1, sorted(p.name for p in tmp_path.iterdir())
    assert response.content == written[0].read_bytes()  # byte for byte what `textmask mask` writes

    negatives = api.get("negative", [])
    assert response.content == expected_png(tiny_session, image, prompts, negatives, kind, bits, **options)


def test_alpha_cutout_and_json_scores(client: httpx.Client, tiny_session: Any) -> None:
    rgba = noise_png(48, 64, seed=7, channels=4)  # its own transparency is kept in the cut-out
    response = post_mask(client, rgba, "rgba.png", output="cutout")
    assert response.status_code == 200
    assert response.content == expected_png(tiny_session, rgba, ["a cat"], kind="cutout")
    with Image.open(io.BytesIO(response.content)) as cut:
        assert cut.mode == "RGBA" and cut.size == (64, 48)

    answer = post_mask(client, EXAMPLE.read_bytes(), prompts=["a cat", "the sky"], negative=["the grass"],
                       output="json", threshold=0.5)  # fmt: skip
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert (body["width"], body["height"]) == (512, 384)
    assert [entry["prompt"] for entry in body["prompts"]] == ["a cat", "the sky"]
    assert [entry["prompt"] for entry in body["negatives"]] == ["the grass"]
    from textmask.images import read_image

    levels = read_image(EXAMPLE).levels
    entries = body["prompts"] + body["negatives"]
    probs = tiny_session.predict(levels, [entry["prompt"] for entry in entries])  # [3, H, W], one vision pass
    for entry, prob in zip(entries, probs):
        assert entry["max"] == pytest.approx(float(prob.max()), abs=1e-5)
        assert entry["mean"] == pytest.approx(float(prob.mean()), abs=1e-5)
    mask = tiny_session.mask(levels, ["a cat", "the sky"], negative_prompts=["the grass"], threshold=0.5)
    assert body["coverage"] == pytest.approx(float(mask.mean()), abs=1e-5)
    assert body["options"]["threshold"] == 0.5
    import textmask

    found = textmask.instances(mask, threshold=0.5)  # the mask's objects, as `textmask mask --instances` lists them
    assert [entry["box"] for entry in body["instances"]] == found.boxes.tolist()
    assert [entry["area"] for entry in body["instances"]] == found.areas.tolist()


# -------------------------------------------------------------------------------------- errors
def test_bad_images_are_400(client: httpx.Client) -> None:
    assert_error(post_mask(client, b"not an image at all", "notes.txt"), 400, "bad_image", "image")
    assert_good(client)
    truncated = EXAMPLE.read_bytes()[:3000]
    assert_error(post_mask(client, truncated, "cut.png"), 400, "bad_image", "image")
    assert_good(client)
    assert_error(post_mask(client, b"", "empty.png"), 400, "bad_image", "image")
    assert_good(client)


def test_over_the_limits_is_413(client: httpx.Client, server: Server) -> None:
    big = os.urandom(1024 * 1024 + 200_000)  # over --max-upload-mb 1 (with a Content-Length)
    error = assert_error(post_mask(client, big, "big.png"), 413, "upload_too_large", "image")
    assert "1 MB" in error["message"]
    assert_good(client)

    # Without a Content-Length (chunked), the server counts while it reads.
    with httpx.Client(base_url=server.url, timeout=60) as fresh:
        built = fresh.build_request("POST", "/v1/mask", files={"image": ("big.png", big)}, data={"prompt": "x"})
        body = built.read()
        pieces = iter([body[start : start + 65536] for start in range(0, len(body), 65536)])
        response = fresh.post("/v1/mask", content=pieces, headers={"content-type": built.headers["content-type"]})
        assert "content-length" not in response.request.headers
    assert_error(response, 413, "upload_too_large", "image")
    assert_good(client)

    wide = gradient_png(1500, 2100)  # 3.15 M pixels > --max-pixels 3,000,000, though a small file
    error = assert_error(post_mask(client, wide, "wide.png"), 413, "image_too_large", "image")
    assert "2100×1500" in error["message"]
    assert_good(client)


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [
        ({"prompts": None}, "missing_field", "prompt"),
        ({"prompts": ["  "]}, "invalid_field", "prompt"),
        ({"prompts": [f"p{i}" for i in range(17)]}, "invalid_field", "prompt"),
        ({"threshold": 2}, "invalid_field", "threshold"),
        ({"threshold": "abc"}, "invalid_field", "threshold"),
        ({"grow": 2.5}, "invalid_field", "grow"),
        ({"blur": -1}, "invalid_field", "blur"),
        ({"normalize": "loud"}, "invalid_field", "normalize"),
        ({"invert": "maybe"}, "invalid_field", "invert"),
        ({"output": "gif"}, "invalid_field", "output"),
        ({"bits": 12}, "invalid_field", "bits"),
        ({"treshold": 0.5}, "unknown_field", "treshold"),
    ],
    ids=lambda value: str(value)[:30] if isinstance(value, dict) else None,
)
def test_bad_fields_are_422(client: httpx.Client, fields: dict, code: str, field: str) -> None:
    assert_error(post_mask(client, **fields), 422, code, field)
    assert_good(client)


def test_other_errors_keep_the_shape(client: httpx.Client) -> None:
    assert_error(client.post("/v1/mask", data={"prompt": "x"}), 422, "missing_field", "image")
    assert_error(client.post("/v1/mask", json={"prompt": "x"}), 422, "missing_field", "image")
    assert_error(client.get("/v1/mask"), 405, "method_not_allowed", None)
    assert_error(client.get("/nowhere"), 404, "not_found", None)
    assert_good(client)


def test_api_key(gated: tuple[str, GatedSession]) -> None:
    with httpx.Client(base_url=gated[0], timeout=60) as http:
        error = assert_error(post_mask(http), 401, "unauthorized", None)
        assert "Bearer" in error["message"]
        assert_error(http.get("/v1/info"), 401, "unauthorized", None)
        assert_error(http.get("/metrics"), 401, "unauthorized", None)
        wrong = http.post("/v1/mask", files={"image": ("a.png", SMALL)}, data={"prompt": "x"},
                          headers={"Authorization": "Bearer wrong"})  # fmt: skip
        assert_error(wrong, 403, "forbidden", None)
        assert_error(http.get("/v1/info", headers={"X-API-Key": "wrong"}), 403, "forbidden", None)
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        assert http.get("/").status_code == 200  # the page asks for the key itself
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
            response = http.post("/v1/mask", files={"image": ("a.png", SMALL)}, data={"prompt": "x"}, headers=headers)
            assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
            assert http.get("/v1/info", headers=headers).json()["auth"] is True


# ------------------------------------------------------------------------------------- batcher
def test_batching_queue_full_and_client_gone(gated: tuple[str, GatedSession], tiny_session: Any) -> None:
    """While the engine is held: a victim queues then disconnects, three more queue, the queue is full (503 +
    Retry-After); once it is let go, the victim is dropped unseen and the three share one engine call, each exact."""
    url, session = gated
    headers = {"X-API-Key": KEY}
    results: dict[str, httpx.Response] = {}

    def send(label: str, **kwargs: Any) -> threading.Thread:
        def run() -> None:
            with httpx.Client(base_url=url, timeout=120, headers=headers) as own:
                results[label] = post_mask(own, **kwargs)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        before = metrics(http)
        session.calls.clear()
        session.entered.clear()
        session.gate.clear()
        first = send("first", image=noise_png(24, 24, seed=10))
        assert session.entered.wait(60), "the first request never reached the engine"
        assert metrics(http)["textmask_requests_in_progress"] == 1  # the event loop answers while the engine works

        victim = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        request = http.build_request("POST", "/v1/mask", files={"image": ("victim.png", SMALL)}, data={"prompt": "v"})
        head = f"POST /v1/mask HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n"
        head += f"Content-Type: {request.headers['content-type']}\r\n"
        body = request.read()
        victim.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for(lambda: session.queued() == 1, what="the victim to queue")  # submitted, not only admitted
        victim.close()  # the client is gone; its request must never reach the model
        wait_for(lambda: metrics(http)["textmask_requests_in_progress"] == 1, what="the server to see it go")

        cases = {  # mixed sizes, prompts and options: (API fields, the same for the Python API)
            "a": (dict(image=noise_png(30, 44, seed=11), prompts=["a cat"], threshold=0.5), dict(threshold=0.5)),
            "b": (dict(image=noise_png(64, 36, seed=12), prompts=["a dog", "grass"], grow=2), dict(grow=2)),
            "c": (dict(image=noise_png(50, 50, seed=13), prompts=["sky"], negative=["a tree"], invert="true"),
                  dict(invert=True)),
        }  # fmt: skip
        threads = [send(name, **fields) for name, (fields, _) in cases.items()]
        wait_for(lambda: session.queued() == QUEUE, what="the queue to fill")
        assert metrics(http)["textmask_queue_depth"] == QUEUE
        full = post_mask(http)
        assert_error(full, 503, "queue_full", None)
        assert int(full.headers["retry-after"]) >= 1

        session.gate.set()
        for thread in [first, *threads]:
            thread.join(120)
        assert results["first"].status_code == 200, results["first"].text
        for name, (fields, options) in cases.items():
            response = results[name]
            assert response.status_code == 200, response.text
            negatives = fields.get("negative", ())
            expected = expected_png(tiny_session, fields["image"], fields["prompts"], negatives, **options)
            assert response.content == expected  # batched with others, still exactly its own mask
        assert session.calls == [1, 3], session.calls  # the first alone; then a, b, c together, and not the victim

        after = metrics(http)
        dropped = 'textmask_dropped_total{reason="client_gone"}'
        assert after[dropped] == before.get(dropped, 0) + 1
        assert after["textmask_batch_size_count"] - before["textmask_batch_size_count"] == 2
        assert after["textmask_batch_size_sum"] - before["textmask_batch_size_sum"] == 4
        assert after['textmask_batch_size_bucket{le="3"}'] - before['textmask_batch_size_bucket{le="3"}'] == 2
        assert after['textmask_batch_size_bucket{le="2"}'] - before['textmask_batch_size_bucket{le="2"}'] == 1
        assert post_mask(http).status_code == 200


def test_concurrent_requests_share_engine_calls(gated: tuple[str, GatedSession]) -> None:
    """Four clients at once (as many as the queue takes), the engine idle: they share engine calls."""
    url, session = gated
    session.calls.clear()
    barrier = threading.Barrier(QUEUE)
    codes: list[int] = []

    def run(seed: int) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": KEY}) as own:
            image = noise_png(32, 32, seed=seed)
            barrier.wait()
            codes.append(post_mask(own, image=image).status_code)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(QUEUE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert codes == [200] * QUEUE
    assert sum(session.calls) == QUEUE and max(session.calls) > 1, session.calls


def _closed_loop(clients: int, rounds: int, wait_s: float, engine_s: float) -> tuple[list[int], float]:
    """``clients`` clients, started 30 ms apart, each sending its next request when its answer is in (after a 10 ms
    round trip), on a batcher whose engine takes ``engine_s`` per call; the batch sizes and the wall time."""
    import asyncio

    from textmask.serve.batcher import MicroBatcher

    sizes: list[int] = []

    def run(requests: list[Any]) -> list[Any]:
        sizes.append(len(requests))
        time.sleep(engine_s)
        return list(requests)

    batcher = MicroBatcher(run=run, max_batch=8, wait_s=wait_s, capacity=64)
    batcher.start()

    async def client(number: int) -> None:
        await asyncio.sleep(0.03 * number)  # they start apart, as uploads finish apart
        for index in range(rounds):
            batcher.reserve()
            assert await batcher.submit([(number, index)]) == [(number, index)]
            await asyncio.sleep(0.01)

    async def everyone() -> None:
        await asyncio.gather(*(client(number) for number in range(clients)))

    started = time.perf_counter()
    asyncio.run(everyone())
    batcher.close(10)
    return sizes, time.perf_counter() - started


def test_closed_loop_clients_share_batches_and_a_lone_client_does_not_wait() -> None:
    sizes, _ = _closed_loop(clients=4, rounds=8, wait_s=0.002, engine_s=0.3)
    assert sum(sizes) == 32
    assert sum(sizes) / len(sizes) > 2.5, sizes  # not alternating halves (2.0): the four come back into one batch
    sizes, seconds = _closed_loop(clients=1, rounds=6, wait_s=0.3, engine_s=0.02)
    assert sizes == [1] * 6
    assert seconds < 1.5, seconds  # only the very first waited for company (~0.5 s); waiting each round is ≥ 1.98 s


# ------------------------------------------------------------------------------------------ page
def _chrome() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def test_page_in_a_real_browser(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    found = _chrome()
    if found is None:
        message = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("TEXTMASK_REQUIRE_BROWSER"):  # CI installed them: a skip would hide the page test
            pytest.fail(message)
        pytest.skip(message)
    if os.environ.get("TEXTMASK_REQUIRE_BROWSER"):
        import selenium.webdriver as webdriver
    else:
        webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900", "--disable-extensions"):  # fmt: skip
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})  # fmt: skip
    driver = webdriver.Chrome(service=DriverService(found[1]), options=options)
    artifacts = Path(os.environ.get("TEXTMASK_ARTIFACTS") or ROOT / "tests" / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.get(server.url + "/")
        wait_for(lambda: "cpu" in driver.find_element(By.ID, "model-badge").text, 30, "the page to read /v1/info")
        assert driver.find_elements(By.CSS_SELECTOR, "[data-option=threshold] input[type=range]")
        assert driver.find_elements(By.CSS_SELECTOR, "[data-option=grow]")
        assert driver.find_elements(By.CSS_SELECTOR, "[data-option=blur]")
        assert not driver.find_elements(By.CSS_SELECTOR, "#main-options [data-option=refine]") or "refine" in {
            option["name"] for option in client.get("/v1/info").json()["options"]}  # fmt: skip

        driver.find_element(By.ID, "file-input").send_keys(str(EXAMPLE))
        driver.find_element(By.ID, "prompt-input").send_keys("a cat")
        preview = driver.find_element(By.ID, "preview-img")
        wait_for(lambda: preview.get_attribute("data-kind") == "mask", 60, "the mask preview")
        wait_for(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", preview)
                 == 512, 30, "the preview image to load")  # fmt: skip
        assert not driver.find_element(By.ID, "error").is_displayed()
        driver.save_screenshot(str(artifacts / "serve-page.png"))

        expected = post_mask(client, EXAMPLE.read_bytes(), EXAMPLE.name, prompts=["a cat"])
        driver.find_element(By.ID, "download-mask").click()
        target = downloads / "cat-on-lawn.mask.png"
        wait_for(lambda: target.exists() and target.stat().st_size == len(expected.content), 30, "the download")
        assert target.read_bytes() == expected.content  # the page's download is the API's answer

        driver.find_element(By.CSS_SELECTOR, "[data-view=overlay]").click()
        wait_for(lambda: preview.get_attribute("data-kind") == "overlay", 60, "the overlay preview")
        logs = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        assert not logs, logs  # no script errors, nothing blocked by the page's security policy

        # /docs renders the OpenAPI document (3.1) with the bundled Swagger UI, no network needed.
        driver.get(server.url + "/docs")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#operations-api-mask_v1_mask_post"), 30,
                 "Swagger UI to list POST /v1/mask")  # fmt: skip
        assert "/v1/mask" in driver.find_element(By.CSS_SELECTOR, "#operations-api-mask_v1_mask_post").text
        assert not driver.find_elements(By.CSS_SELECTOR, ".errors-wrapper")
        driver.save_screenshot(str(artifacts / "serve-docs.png"))
    finally:
        driver.quit()


# ------------------------------------------------------------------------------------ structure
def test_faces_do_not_import_each_other() -> None:
    code = (
        "import sys, textmask.cli, textmask.serve.app\n"
        "bad = [m for m in sys.modules if m.startswith(('textmask.comfy', 'textmask.ray_data'))]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    cli_source = (SRC / "textmask" / "cli" / "serve.py").read_text()
    assert 'import_module("textmask.serve")' in cli_source and "from ..serve" not in cli_source
    for path in (SRC / "textmask" / "serve").glob("*.py"):
        text = path.read_text()
        assert "..cli" not in text and "..comfy" not in text and "ray_data" not in text, path
    # `import textmask.cli` (the --help path) loads neither torch nor the server.
    probe = "import sys, textmask.cli; assert not {'torch', 'fastapi', 'textmask.serve'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", probe], check=True, env=env, timeout=60)


def test_missing_model_exits_3(servers: dict[str, Server]) -> None:
    missing = servers["missing"]
    assert missing.process.wait(120) == 3, missing.log()
    assert "textmask: " in missing.log() and "no-such-model" in missing.log()


# ------------------------------------------------------------------------------------- shutdown
def test_sigterm_finishes_requests_in_flight(servers: dict[str, Server]) -> None:
    """SIGTERM while three requests are held in the engine (the ``held`` server): they complete 200 once let go, new
    ones are refused meanwhile, and the server exits 0."""
    server = servers["held"]
    gate = server.gate
    assert gate is not None
    gate.touch()  # engine calls now wait
    results: list[httpx.Response] = []

    def send(image: bytes) -> threading.Thread:
        def run() -> None:
            with httpx.Client(base_url=server.url, timeout=300) as own:
                results.append(post_mask(own, image=image))

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    images = [gradient_png(1100, 1100), noise_png(300, 400, seed=5), gradient_png(900, 1200)]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        threads = [send(image) for image in images]
        wait_for(lambda: metrics(http)["textmask_requests_in_progress"] == 3, what="3 requests in flight")
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        late = httpx.post(f"{server.url}/v1/mask", files={"image": ("a.png", SMALL)}, data={"prompt": "x"}, timeout=30)
        assert_error(late, 503, "shutting_down", None)
    except httpx.TransportError:
        pass  # the listening socket is already closed: connection refused
    assert server.process.poll() is None, "the server quit with requests in flight"
    assert not results, "a request was answered while the engine was held"
    gate.unlink()  # let the engine go
    for thread in threads:
        thread.join(300)
    assert [response.status_code for response in results] == [200, 200, 200], [r.text for r in results]
    assert all(response.content.startswith(b"\x89PNG") for response in results)
    assert server.process.wait(90) == 0, server.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=5)


def test_matte_cutout_and_background_colour(client: httpx.Client, tiny_session: Any) -> None:
    """``matte``: the matte's alpha and estimated foreground, what the Python API and the CLI's renderer give;
    ``background``: an RGB composite on that colour; a bad colour is a 422 naming the field."""
    from textmask.batch.job import render_png
    from textmask.images import read_image

    image = noise_png(48, 64, seed=11)
    loaded = read_image("upload.png", data=image)
    mask = tiny_session.mask(loaded.levels, ["a cat"], refine="matte")
    response = post_mask(client, image, output="cutout", matte="true")
    assert response.status_code == 200, response.text
    assert response.content == render_png("cutout", loaded, mask, 8, matte=True, background=None)
    plain = post_mask(client, image, output="cutout")
    assert plain.content != response.content  # the matte's alpha and colours differ from the plain cut-out

    painted = post_mask(client, image, output="cutout", matte="true", background="#00ff00")
    assert painted.status_code == 200, painted.text
    with Image.open(io.BytesIO(painted.content)) as rgb:
        assert rgb.mode == "RGB" and rgb.size == (64, 48)
    assert painted.content == render_png("cutout", loaded, mask, 8, matte=True, background=(0, 255, 0))

    assert_error(post_mask(client, image, output="cutout", background="plaid"), 422, "invalid_field", "background")
    info = client.get("/v1/info").json()
    assert [field["name"] for field in info["cutout"]] == ["matte", "background"]
    assert_good(client)
