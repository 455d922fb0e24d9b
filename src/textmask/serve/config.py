"""The service's settings (what ``textmask serve`` takes), checked once, importable without torch or FastAPI."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..constants import BACKENDS, DEFAULT_MODEL, DTYPES

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_PROMPTS = 16  # prompts + negative prompts per request: each costs a decoder pass (and a text pass, once)
MAX_PROMPT_CHARS = 500  # CLIP reads 77 tokens; longer texts are truncated by the engine anyway


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one server process (see ``textmask serve --help`` and docs/serve.md).

    Attributes:
        host, port: where to listen (default loopback only).
        model, device, dtype, backend, cache_dir, allow_pickle: the model, as for :func:`textmask.load`.
        max_batch: most requests in one engine call (one shared vision pass).
        batch_wait_ms: how long the first request of a batch waits for company when the engine is idle.
        queue: most requests admitted and waiting for the engine; past it, 503 with ``Retry-After``.
        max_upload_mb: largest request body, in MiB (the image and the form fields).
        max_pixels: largest image, width × height, checked from the header before decoding.
        max_prompts: most prompts plus negative prompts per request.
        api_key: when set, ``/v1/*`` and ``/metrics`` need it (``Authorization: Bearer KEY`` or ``X-API-Key``).
        cors: origins allowed to call the API from a browser (``*`` for any); none by default.
        shutdown_timeout: on SIGTERM, seconds to let requests in flight finish.
        forwarded_allow_ips: proxies whose ``X-Forwarded-*`` headers are trusted (uvicorn's setting).
        log_level: uvicorn's log level.
        access_log: log one line per request.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = DEFAULT_MODEL
    device: str = "auto"
    dtype: str = "float32"
    backend: str = "auto"
    cache_dir: str | None = None
    allow_pickle: bool = False
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    queue: int = 64
    max_upload_mb: float = 20.0
    max_pixels: int = 25_000_000
    max_prompts: int = MAX_PROMPTS
    api_key: str | None = None
    cors: tuple[str, ...] = field(default_factory=tuple)
    shutdown_timeout: float = 30.0
    forwarded_allow_ips: str | None = None
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors", tuple(self.cors or ()))
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key: must not be empty (leave it out to serve without a key)")
        if not 0 <= int(self.port) <= 65535:
            raise ValueError(f"port: must be in 0..65535, got {self.port}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {DTYPES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend: {self.backend!r} is not one of {BACKENDS}")
        for name in ("max_batch", "queue", "max_pixels", "max_prompts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("batch_wait_ms", "shutdown_timeout"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name}: must be ≥ 0, got {getattr(self, name)}")
        if not float(self.max_upload_mb) > 0:
            raise ValueError(f"max_upload_mb: must be > 0, got {self.max_upload_mb}")

    @property
    def max_upload_bytes(self) -> int:
        """The body limit in bytes (``max_upload_mb`` MiB)."""
        return int(float(self.max_upload_mb) * 1024 * 1024)

    @property
    def loopback(self) -> bool:
        """Whether the server listens on this machine only."""
        return self.host in LOOPBACK_HOSTS
