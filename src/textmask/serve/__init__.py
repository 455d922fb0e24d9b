"""``textmask serve``: masks over HTTP, with a web page, batching concurrent requests into one engine call.

A face like the CLI or the ComfyUI nodes: it converts HTTP to engine calls and back. :func:`serve` runs the
server (the CLI asks for it by name); :func:`create_app` gives the ASGI app to run in your own server. Needs the
``serve`` extra (``pip install 'textmask[serve]'``). See docs/serve.md.
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve"]


def create_app(config: ServeConfig | None = None, session: Any = None, **kwargs: Any) -> Any:
    """The FastAPI app (see :func:`textmask.serve.app.create_app`)."""
    from .app import create_app as build

    return build(config, session, **kwargs)


def serve(**options: Any) -> None:
    """Run the server until SIGINT/SIGTERM: requests in flight finish, new ones get 503, then it exits.

    Args:
        options: the fields of :class:`ServeConfig` (``host``, ``port``, ``model``, ``max_batch``...).

    Raises:
        ValueError: a setting, device or dtype this machine cannot use (before anything starts).
        TextmaskError: the model could not be loaded (the server stops as soon as that is known).
    """
    config = ServeConfig(**options)
    from ..model import resolve_backend, resolve_device, resolve_dtype

    # A bad device, dtype or backend fails now, not after binding.
    if resolve_backend(config.backend, config.device, config.dtype)[0] == "torch":
        resolve_dtype(config.dtype, resolve_device(config.device))
    import uvicorn

    from .app import create_app as build

    failures: list[BaseException] = []
    holder: list[Any] = []

    def fatal(error: BaseException) -> None:
        failures.append(error)
        if holder:
            holder[0].should_exit = True

    app = build(config, on_fatal=fatal)
    service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            service.begin_drain()  # from now on mask requests get 503; those in flight finish
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has stopped (the process then dies of it); a graceful stop is
            # a normal end for a service, so it returns instead and the command exits 0.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    settings: dict[str, Any] = dict(
        host=config.host,
        port=int(config.port),
        log_level=config.log_level,
        access_log=config.access_log,
        timeout_graceful_shutdown=float(config.shutdown_timeout),
        proxy_headers=True,
    )
    if config.forwarded_allow_ips is not None:
        settings["forwarded_allow_ips"] = config.forwarded_allow_ips
    server = Server(uvicorn.Config(app, **settings))
    holder.append(server)
    if failures:
        server.should_exit = True
    server.run()
    if failures:
        error = failures[0]
        if isinstance(error, Exception):
            raise error
        raise RuntimeError(str(error))
