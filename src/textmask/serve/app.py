"""The HTTP face: a FastAPI app that turns requests into engine calls and masks into PNGs (no mask logic here).

``POST /v1/mask`` (multipart: ``image``, ``prompt``..., ``negative``..., every :class:`textmask.MaskOptions` field,
``output``, ``bits``) answers with the very PNG ``textmask mask FILE -p ... --combine union`` writes, or JSON scores.
``GET /healthz``, ``/readyz``, ``/v1/info``, ``/metrics`` (Prometheus), ``/docs`` (OpenAPI), ``/`` (the web page).

Every error is JSON, ``{"error": {"code", "message", "field"}}``. The engine runs on the micro-batcher's worker
thread (:mod:`.batcher`); uploads are decoded and PNGs encoded on a small thread pool, so the event loop only
moves bytes.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import ImageTooLargeError, InputError, PromptError, TextmaskError, first_line
from ..postprocess import parse_colour
from .batcher import BatchStats, ClientGone, MicroBatcher, QueueFull
from .config import MAX_PROMPT_CHARS, ServeConfig
from .metrics import CONTENT_TYPE, Metrics
from .options import OptionField, build_options, field_of, option_fields

log = logging.getLogger("textmask.serve")

STATIC = Path(__file__).parent / "static"
OUTPUTS = ("mask", "cutout", "overlay", "json")
# Request fields beside the mask options, described as /v1/info describes those (the web page builds controls).
CUTOUT_FIELDS: dict[str, dict[str, Any]] = {
    "matte": {
        "name": "matte",
        "type": "boolean",
        "nullable": False,
        "default": False,
        "choices": None,
        "min": None,
        "max": None,
        "description": "Soft alpha where the truth is soft (hair, defocus, motion blur), crisp edges "
        "elsewhere (textmask.matte); the cutout takes the estimated foreground colours (no old-background fringe).",
    },
    "background": {
        "name": "background",
        "type": "string",
        "nullable": True,
        "default": None,
        "choices": None,
        "min": None,
        "max": None,
        "description": "Cutout: composite onto this colour (white, #RRGGBB or R,G,B) as an RGB PNG instead of alpha.",
    },
}
PROTECTED = ("/v1/", "/metrics")  # need the API key when one is set (the page, docs and probes do not)
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    429: "too_many_requests",
    499: "client_closed_request",
    500: "internal",
    503: "unavailable",
}
_ROUTES = ("/v1/mask", "/v1/info", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/")
_PREFIXES = ("/static", "/docs/assets")  # metric labels for the files under them


class ApiError(Exception):
    """An error answer: HTTP ``status``, a stable ``code``, a message naming the ``field`` at fault."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error.code, error.message, error.field), error.status, headers=error.headers)


# ------------------------------------------------------------------------------------------------- state
class Service:
    """What the app's handlers share: settings, the model once loaded, the batcher, metrics, thread pools."""

    def __init__(
        self, config: ServeConfig, session: Any = None, on_fatal: Callable[[BaseException], None] | None = None
    ) -> None:
        self.config = config
        self.session = session
        self.load_error: BaseException | None = None
        self.on_fatal = on_fatal
        self.draining = False
        self.ready = threading.Event()
        self.random_weights = False
        self.fields: list[OptionField] = option_fields()
        self.batcher = MicroBatcher(
            run=self._run_engine,
            max_batch=config.max_batch,
            wait_s=config.batch_wait_ms / 1000.0,
            capacity=config.queue,
            on_batch=self._record_batch,
        )
        self.metrics = Metrics(queue_depth=lambda: float(self.batcher.depth))
        self.io = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="textmask-io")
        self._loader: threading.Thread | None = None

    # -------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Load the model (on a thread: ``/healthz`` answers meanwhile), warm it up, start the batcher."""
        if self.config.max_pixels > _pillow_limit():
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = int(self.config.max_pixels)  # the service's own limit is the one that counts
        self._loader = threading.Thread(target=self._load, name="textmask-load", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        try:
            if self.session is None:
                from ..batch import ModelSpec

                spec = ModelSpec(
                    model=self.config.model,
                    device=self.config.device,
                    dtype=self.config.dtype,
                    backend=self.config.backend,
                    cache_dir=self.config.cache_dir,
                    allow_pickle=self.config.allow_pickle,
                )
                self.session = spec.load()
                spec.warn_if_random(self.session.loaded.folder)
            self._warm_up()
        except BaseException as exc:
            self.load_error = exc
            log.error("textmask: cannot load the model: %s", first_line(exc))
            if self.on_fatal is not None:
                self.on_fatal(exc)
            return
        self.random_weights = self._is_random()
        self.metrics.info.update(version=__version__, model=self.config.model, **self.device_info())
        self.batcher.start()
        self.metrics.ready.set(1)
        self.ready.set()
        log.info("textmask: model %s ready on %s", self.config.model, self.device_info()["device"])

    def _is_random(self) -> bool:
        from ..constants import RANDOM_SOURCES
        from ..info import is_random_model

        folder = getattr(self.session.loaded, "folder", None)
        try:
            return self.config.model in RANDOM_SOURCES or (folder is not None and is_random_model(folder))
        except OSError:
            return False

    def _warm_up(self) -> None:
        import numpy as np

        from ..engine import MaskRequest

        self.session.mask_requests([MaskRequest(np.zeros((64, 64, 3), dtype=np.uint8), prompts="warm up")])

    def begin_drain(self) -> None:
        """Stop taking new mask requests (SIGTERM): they get 503; those admitted finish."""
        self.draining = True
        self.metrics.ready.set(0)

    def stop(self) -> None:
        """Finish queued work, stop the worker and the thread pool (after the server stopped taking requests)."""
        self.begin_drain()
        self.batcher.close(timeout=self.config.shutdown_timeout)
        self.io.shutdown(wait=True)

    def device_info(self) -> dict[str, str]:
        session = self.session
        if session is None:
            return {"device": self.config.device, "dtype": self.config.dtype}
        return {"device": str(session.device), "dtype": session.precision_name}

    def precision_check(self) -> dict[str, Any] | None:
        """How the running precision agreed with float32 on the built-in scenes (textmask.precision), or None:
        float32, not loaded yet, or the check turned off."""
        check = getattr(self.session, "precision_check", None)
        return None if check is None else check.to_dict()

    # ------------------------------------------------------------------------------- admission
    def unavailable(self) -> ApiError | None:
        """Why mask requests cannot be served now (loading, failed, stopping), or None."""
        if self.draining:
            return ApiError(503, "shutting_down", "the server is shutting down; retry on another replica",
                            headers={"Retry-After": "5", "Connection": "close"})  # fmt: skip
        if self.load_error is not None:
            message = f"the model could not be loaded: {first_line(self.load_error)}"
            return ApiError(503, "model_unavailable", message, headers={"Retry-After": "30"})
        if not self.ready.is_set():
            return ApiError(503, "loading", "the model is loading; retry shortly", headers={"Retry-After": "5"})
        return None

    # ---------------------------------------------------------------------------------- engine
    def _run_engine(self, requests: list[Any]) -> list[Any]:
        """One engine call for a batch (worker thread); a request that fails alone gets its own error."""
        try:
            return list(self.session.mask_requests(requests, batch_size=self.config.max_batch))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
        results: list[Any] = []
        for request in requests:  # isolate the request at fault; the others still get their masks
            try:
                results.append(self.session.mask_requests([request])[0])
            except Exception as exc:
                results.append(exc)
        return results

    def _record_batch(self, stats: BatchStats) -> None:
        if stats.size:
            self.metrics.batch_size.observe(stats.size)
            self.metrics.batch_seconds.observe(stats.seconds)
        if stats.dropped:
            self.metrics.dropped.inc(stats.dropped, reason="client_gone")

    async def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run blocking work (decoding, encoding) on the I/O pool."""
        return await asyncio.get_running_loop().run_in_executor(self.io, function, *args)


def _pillow_limit() -> int:
    from PIL import Image

    return int(Image.MAX_IMAGE_PIXELS or 0) or 1 << 62


# ------------------------------------------------------------------------------------ conversions
def _display_name(filename: str | None) -> str:
    """The upload's file name as messages and downloads show it (no folders, no odd characters)."""
    name = Path((filename or "").replace("\\", "/")).name.strip()
    name = re.sub(r"[^\w.+-]+", "-", name)[:80].strip(".-")
    return name or "upload"


def decode_upload(data: bytes, filename: str, max_pixels: int) -> Any:
    """The upload's bytes → :class:`~textmask.images.LoadedImage`, as the CLI reads files (I/O thread)."""
    from ..images import image_size, read_image

    width, height = image_size(data, "image", filename)
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image: {filename} has {width}×{height} = {width * height:,} pixels; this server takes at most "
            f"{max_pixels:,} (--max-pixels)"
        )
    return read_image(filename, name="image", data=data)


def encode_answer(kind: str, image: Any, masks: Any, bits: int, **cutout: Any) -> bytes:
    """The PNG of one output (I/O thread): the CLI's own renderer and encoder (``cutout``: ``matte=``,
    ``background=``)."""
    from ..batch.job import render_png

    return render_png(kind, image, masks[0], bits, **cutout)


def score_answer(
    masks: Any, maps: Any, prompts: list[str], negatives: list[str], unique: list[str], threshold: float | None = None
) -> dict:
    """The ``output=json`` body: each prompt's peak and mean probability, the mask's coverage, and its instances
    (connected objects above ``threshold``, else 0.5: boxes ``[x0, y0, x1, y1]`` with exclusive ends, scores,
    areas)."""
    from ..components import describe_instances, instances
    from ..postprocess import map_scores

    scores = map_scores(maps).tolist()  # [U, 2]
    where = {prompt: index for index, prompt in enumerate(unique)}
    mask = masks[0]
    height, width = (int(side) for side in mask.shape[-2:])

    def entry(prompt: str) -> dict[str, Any]:
        peak, mean = scores[where[prompt]]
        return {"prompt": prompt, "max": round(float(peak), 6), "mean": round(float(mean), 6)}

    return {
        "width": width,
        "height": height,
        "coverage": round(float(map_scores(mask)[1]), 6),
        "prompts": [entry(prompt) for prompt in prompts],
        "negatives": [entry(prompt) for prompt in negatives],
        "instances": describe_instances(instances(mask, threshold=threshold if threshold is not None else 0.5)),
    }


def _clean_prompts(values: list[str] | None, field: str) -> list[str]:
    prompts = [value.strip() for value in values or []]
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise ApiError(422, "invalid_field", f"{field}[{index}]: is empty; describe what to mask", field)
        if len(prompt) > MAX_PROMPT_CHARS:
            message = f"{field}[{index}]: {len(prompt)} characters; at most {MAX_PROMPT_CHARS} (CLIP reads 77 tokens)"
            raise ApiError(422, "invalid_field", message, field)
    return prompts


def _engine_error(error: BaseException) -> ApiError:
    """An engine failure of one request as the answer it gets."""
    if isinstance(error, ImageTooLargeError):
        return ApiError(413, "image_too_large", first_line(error), "image")
    if type(error).__name__ == "OutOfMemoryError":
        message = f"{first_line(error)} (send a smaller image or fewer prompts)"
        return ApiError(413, "out_of_memory", message, "image")
    if isinstance(error, PromptError):
        return ApiError(422, "invalid_field", first_line(error), "prompt")
    if isinstance(error, (InputError, ValueError, TextmaskError)):
        return ApiError(422, "invalid_request", first_line(error))
    log.error("textmask: unexpected engine error", exc_info=error)
    return ApiError(500, "internal", f"unexpected error: {type(error).__name__}: {first_line(error)}")


# ---------------------------------------------------------------------------------------- gate
class Gate:
    """Pure ASGI middleware in front of the routes: the API key, the body-size limit, early 503s for mask requests
    (before a large upload is read), and the request metrics."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        service, path, method = self.service, scope["path"], scope["method"]
        route = path if path in _ROUTES else next((p for p in _PREFIXES if path.startswith(p + "/")), "other")
        started = time.perf_counter()
        status = 500
        exceeded = False
        answered = False

        async def send_tracked(message: Message) -> None:
            nonlocal status, answered
            if exceeded:  # the body was cut off: whatever the app says, the answer is 413
                if not answered:
                    answered = True
                    status = 413
                    await _send_json(send, 413, self._too_large())
                return
            if message["type"] == "http.response.start":
                status = int(message["status"])
                answered = True
            await send(message)

        try:
            early = self._check(scope, method, path)
            if early is not None:
                status = early.status
                await _send_json(send, early.status, error_body(early.code, early.message, early.field), early.headers)
                return
            limit = service.config.max_upload_bytes + 65536  # the image plus the form fields around it
            received = 0

            async def receive_limited() -> Message:
                nonlocal received, exceeded
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        exceeded = True
                        raise _BodyTooLarge
                return message

            try:
                await self.app(scope, receive_limited, send_tracked)
            except _BodyTooLarge:
                pass
            if exceeded and not answered:
                status = 413
                await _send_json(send, 413, self._too_large())
        finally:
            service.metrics.requests.inc(route=route, status=str(status))
            if route == "/v1/mask" and method == "POST":
                service.metrics.latency.observe(time.perf_counter() - started)

    def _too_large(self) -> dict[str, Any]:
        mb = self.service.config.max_upload_mb
        return error_body("upload_too_large", f"image: the upload is over this server's {mb:g} MB limit", "image")

    def _check(self, scope: Scope, method: str, path: str) -> ApiError | None:
        config = self.service.config
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if config.api_key and method != "OPTIONS" and path.startswith(PROTECTED):
            given = headers.get("x-api-key")
            authorization = headers.get("authorization", "")
            if given is None and authorization[:7].lower() == "bearer ":
                given = authorization[7:].strip()
            if not given:
                message = "an API key is required: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
                return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="textmask"'})
            if not secrets.compare_digest(given.encode(), config.api_key.encode()):
                return ApiError(403, "forbidden", "the API key is wrong")
        if method == "POST":
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > config.max_upload_bytes + 65536:
                return ApiError(413, "upload_too_large", self._too_large()["error"]["message"], "image",
                                headers={"Connection": "close"})  # fmt: skip
            if path == "/v1/mask":
                unavailable = self.service.unavailable()
                if unavailable is not None:
                    return unavailable
                if self.service.batcher.full:
                    return _queue_full(self.service.batcher.retry_after())
        return None


class _BodyTooLarge(Exception):
    pass


def _queue_full(retry_after: int) -> ApiError:
    return ApiError(503, "queue_full", "the server is busy (its queue is full); retry later",
                    headers={"Retry-After": str(retry_after)})  # fmt: skip


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    import json

    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


# ------------------------------------------------------------------------------------------ app
def create_app(
    config: ServeConfig | None = None,
    session: Any = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The service as an ASGI app (run it with uvicorn, or :func:`textmask.serve.serve`).

    Args:
        config: the settings (default: :class:`ServeConfig`'s defaults).
        session: a loaded :class:`textmask.Segmenter` to serve instead of loading ``config.model``.
        on_fatal: called (from a thread) when the model cannot be loaded; ``serve`` stops the server then.
    """
    config = config or ServeConfig()
    service = Service(config, session, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.stop)

    swagger = _swagger_assets()
    app = FastAPI(
        title="textmask",
        version=__version__,
        summary="Text-prompted segmentation masks (CLIPSeg) over HTTP.",
        description="Send an image and prompts; get the mask `textmask mask` would write. See docs/serve.md.",
        lifespan=lifespan,
        docs_url=None if swagger else "/docs",  # our own /docs (_add_docs) when Swagger UI's files are installed
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_from_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse(error_body(code, message), exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("textmask: unexpected error", exc_info=exc)
        return JSONResponse(error_body("internal", f"unexpected error: {type(exc).__name__}"), 500)

    _add_routes(app, service)
    if swagger is not None:
        _add_docs(app, swagger)
    app.add_middleware(Gate, service=service)
    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Content-Disposition", "Retry-After", "Server-Timing", "X-Textmask-Batch-Size"],
            max_age=600,
        )
    return app


def _from_validation(exc: RequestValidationError) -> ApiError:
    """FastAPI's validation errors (a missing field, a value of the wrong type) → the one error shape."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    location = [part for part in first.get("loc", ()) if isinstance(part, str) and part not in ("body", "query")]
    field = location[0] if location else None
    if first.get("type") == "missing":
        hint = " (a file)" if field == "image" else (", e.g. prompt=a cat" if field == "prompt" else "")
        return ApiError(422, "missing_field", f"{field}: this field is required{hint}", field)
    given = first.get("input")
    shown = f" (got {given!r})" if isinstance(given, (str, int, float)) and len(str(given)) <= 40 else ""
    return ApiError(422, "invalid_field", f"{field}: {first.get('msg', 'invalid value')}{shown}", field)


def _swagger_assets() -> Path | None:
    """The folder of Swagger UI's JS and CSS in the ``fastapi-swagger`` wheel (part of ``textmask[serve]``), or None
    without it (then /docs is FastAPI's own page, which loads them from a CDN)."""
    try:
        from importlib.resources import files

        folder = Path(str(files("fastapi_swagger.resources")))
    except (ImportError, TypeError):
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _add_routes(app: FastAPI, service: Service) -> None:
    config = service.config
    names = [spec.name for spec in service.fields]
    reserved = {"image", "prompt", "negative", "output", "bits", "request", *CUTOUT_FIELDS}
    clash = reserved & set(names)
    if clash:  # a MaskOptions field named like a request field: a bug to fix, not to serve around
        raise RuntimeError(f"MaskOptions fields {sorted(clash)} clash with the request's own fields")

    @app.get("/healthz", summary="The process is up", tags=["probes"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded (503 before, and while shutting down)", tags=["probes"])
    async def readyz() -> JSONResponse:
        unavailable = service.unavailable()
        if unavailable is not None:
            return error_response(unavailable)
        return JSONResponse({"status": "ready"})

    @app.get("/v1/info", summary="Version, model, device, limits and the mask options", tags=["api"])
    async def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "model": config.model,
            **service.device_info(),
            "precision_check": service.precision_check(),
            "ready": service.ready.is_set() and not service.draining,
            "random_weights": service.random_weights,
            "auth": bool(config.api_key),
            "limits": {
                "max_upload_bytes": config.max_upload_bytes,
                "max_pixels": config.max_pixels,
                "max_prompts": config.max_prompts,
                "max_prompt_chars": MAX_PROMPT_CHARS,
                "max_batch": config.max_batch,
                "batch_wait_ms": config.batch_wait_ms,
                "queue": config.queue,
            },
            "outputs": list(OUTPUTS),
            "bits": [8, 16],
            "url_fetching": False,
            "options": [spec.describe() for spec in service.fields],
            "cutout": list(CUTOUT_FIELDS.values()),
        }

    @app.get("/metrics", summary="Prometheus metrics", tags=["probes"])
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    async def mask(request: Request, image: UploadFile, prompt: list[str], negative: list[str], output: str,
                   bits: int, matte: bool = False, background: str | None = None,
                   **options: Any) -> Response:  # fmt: skip
        cutout = {"matte": matte, "background": background}
        return await _answer(service, request, image, prompt, negative, output, bits, options, cutout)

    mask.__signature__ = _mask_signature(service.fields)  # type: ignore[attr-defined]
    app.post(
        "/v1/mask",
        summary="Mask an image",
        description=(
            "Multipart form: `image` (file), `prompt` (repeat for more; one mask for all of them, combined with "
            "`combine`), `negative` (repeatable), the mask options below, `output` and `bits`. The default answer "
            "is an 8-bit grey PNG, byte for byte what `textmask mask FILE -p ... --combine union` writes."
        ),
        tags=["api"],
        response_class=Response,
        responses=_RESPONSES,
    )(mask)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY,
                                                            "Cache-Control": "no-cache"})  # fmt: skip

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _add_docs(app: FastAPI, assets: Path) -> None:
    """/docs: Swagger UI from the fastapi-swagger wheel's files in ``assets``, so it works offline (FastAPI's own
    page loads them from a CDN)."""
    app.mount("/docs/assets", StaticFiles(directory=assets), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title="textmask - Swagger UI",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
        )


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "application/json": {}}, "description": "The mask PNG, or JSON scores"},
    400: {"description": "The image cannot be decoded"},
    401: {"description": "The API key is missing"},
    403: {"description": "The API key is wrong"},
    413: {"description": "Over the upload or pixel limit"},
    422: {"description": "A missing prompt, a bad option value, an unknown field or output"},
    503: {"description": "Loading, shutting down, or the queue is full (see Retry-After)"},
}


def _mask_signature(specs: list[OptionField]) -> inspect.Signature:
    """``POST /v1/mask``'s parameters: the request's own fields, then one form field per mask option."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("request", keyword, annotation=Request),
        inspect.Parameter("image", keyword, annotation=UploadFile, default=File(..., description="The image file.")),
        inspect.Parameter("prompt", keyword, annotation=list[str], default=Form(
            ..., description="What to mask (text); repeat for more: one mask for all, combined with `combine`.")),
        inspect.Parameter("negative", keyword, annotation=list[str], default=Form(
            [], description="Subtract what this matches (repeatable).")),
        inspect.Parameter("output", keyword, annotation=str, default=Form(
            "mask", description="mask (grey PNG), cutout (RGBA PNG), overlay (heat map PNG) or json (scores).")),
        inspect.Parameter("bits", keyword, annotation=int, default=Form(8, description="Mask PNG bit depth: 8 or 16.")),
        inspect.Parameter("matte", keyword, annotation=bool, default=Form(
            False, description=CUTOUT_FIELDS["matte"]["description"])),
        inspect.Parameter("background", keyword, annotation=Optional[str], default=Form(  # noqa: UP045
            None, description=CUTOUT_FIELDS["background"]["description"])),
    ]  # fmt: skip
    for spec in specs:
        default = Form(spec.default, description=spec.description or None)
        parameters.append(inspect.Parameter(spec.name, keyword, annotation=spec.form_type, default=default))
    return inspect.Signature(parameters, return_annotation=Response)


async def _answer(
    service: Service,
    request: Request,
    image: UploadFile,
    prompt: list[str],
    negative: list[str],
    output: str,
    bits: int,
    options: dict[str, Any],
    cutout: dict[str, Any] | None = None,
) -> Response:
    """``POST /v1/mask``: check the fields, decode, batch, render (``cutout``: the ``matte`` and ``background``
    fields)."""
    from ..engine import MaskRequest
    from ..postprocess import MaskOptions

    config = service.config
    unavailable = service.unavailable()
    if unavailable is not None:
        raise unavailable
    known = {"image", "prompt", "negative", "output", "bits", *CUTOUT_FIELDS, *options}
    unknown = sorted(set((await request.form()).keys()) - known)
    if unknown:
        raise ApiError(422, "unknown_field", f"{unknown[0]}: not a field of this API (see /docs)", unknown[0])
    prompts = _clean_prompts(prompt, "prompt")
    negatives = _clean_prompts(negative, "negative")
    if not prompts:
        raise ApiError(422, "missing_field", "prompt: give at least one prompt, e.g. prompt=a cat", "prompt")
    if len(prompts) + len(negatives) > config.max_prompts:
        message = f"prompt: {len(prompts) + len(negatives)} prompts and negatives; at most {config.max_prompts}"
        raise ApiError(422, "invalid_field", message, "prompt")
    if output not in OUTPUTS:
        raise ApiError(422, "invalid_field", f"output: {output!r} is not one of {list(OUTPUTS)}", "output")
    if bits not in (8, 16):
        raise ApiError(422, "invalid_field", f"bits: must be 8 or 16, got {bits}", "bits")
    cutout = dict(cutout or {})
    try:
        cutout["background"] = parse_colour(cutout.get("background"))
    except ValueError as exc:
        raise ApiError(422, "invalid_field", first_line(exc), "background") from None
    cutout["matte"] = bool(cutout.get("matte"))
    if cutout["matte"]:  # the matte's alpha is the mask; the cut-out takes the estimated foreground
        options = {**options, "refine": "matte"}
    try:
        mask_options = build_options(options)
    except (ValueError, TypeError) as exc:
        field = field_of(exc, options)
        raise ApiError(422, "invalid_field", first_line(exc), field) from None
    filename = _display_name(image.filename)
    data = await image.read()
    if not data:
        raise ApiError(400, "bad_image", f"image: {filename} is empty", "image")

    requests = [MaskRequest(None, prompts=prompts, negative_prompts=negatives, options=mask_options)]
    unique = list(dict.fromkeys(prompts + negatives))
    if output == "json":  # each prompt's own map, for its scores (the same batch, so the same engine call)
        plain = MaskOptions(normalize=mask_options.normalize)
        requests.append(MaskRequest(None, targets=[[text] for text in unique], options=plain))
    try:
        service.batcher.reserve(len(requests))
    except QueueFull as exc:
        raise _queue_full(exc.retry_after) from None
    submitted = False
    service.metrics.enter()
    try:
        started = time.perf_counter()
        try:
            loaded = await service.in_thread(decode_upload, data, filename, config.max_pixels)
        except ImageTooLargeError as exc:
            raise ApiError(413, "image_too_large", first_line(exc), "image") from None
        except InputError as exc:
            raise ApiError(400, "bad_image", first_line(exc), "image") from None
        del data
        decoded = time.perf_counter()
        requests = [_with_image(item, loaded.levels) for item in requests]
        if await request.is_disconnected():  # gone while its upload was decoded: the model never sees it
            service.metrics.dropped.inc(reason="client_gone")
            return Response(status_code=499)
        submitted = True
        try:
            results = await service.batcher.submit(requests, request.receive)
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            raise _engine_error(exc) from None
        computed = time.perf_counter()
        if output == "json":
            cut = mask_options.threshold
            level = cut if cut is not None and cut < 1 else None
            body = await service.in_thread(score_answer, results[0], results[1], prompts, negatives, unique, level)
            body.update(model=config.model, options=asdict(mask_options))
            return JSONResponse(body, headers=_timing(started, decoded, computed))
        png = await service.in_thread(functools.partial(encode_answer, **cutout), output, loaded, results[0], bits)
        stem = Path(filename).stem or "image"
        disposition = f'inline; filename="{stem}.{output}.png"'
        headers = {"Content-Disposition": disposition, **_timing(started, decoded, computed)}
        return Response(png, media_type="image/png", headers=headers)
    finally:
        service.metrics.leave()
        if not submitted:
            service.batcher.release(len(requests))


def _with_image(request: Any, levels: Any) -> Any:
    from dataclasses import replace

    return replace(request, image=levels)


def _timing(started: float, decoded: float, computed: float) -> dict[str, str]:
    done = time.perf_counter()
    parts = [("decode", decoded - started), ("engine", computed - decoded), ("encode", done - computed)]
    return {"Server-Timing": ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in parts)}
