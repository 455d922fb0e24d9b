"""``textmask serve``: the HTTP service and its web page (declarations and calls only; the server is
:mod:`textmask.serve`, asked for by name so that the CLI never imports another face)."""

from __future__ import annotations

import importlib
import os
import sys

import click

from .app import CONTEXT, EXIT_CANNOT_RUN, err, main, model_options, quiet_libraries

# What ``import textmask.serve`` needs beyond textmask itself: a missing one means the extra is not installed.
_SERVER_PACKAGES = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "pydantic", "anyio"}


@main.command("serve", context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one).")
@model_options
@click.option(
    "--max-batch", type=click.IntRange(min=1), default=8, show_default=True, help="Most requests per engine call."
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="How long an idle engine waits for more requests to batch with the first.",
)
@click.option(
    "--queue",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Most requests waiting for the engine; beyond it, 503 with Retry-After.",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Largest upload (request body), MiB.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=25_000_000,
    show_default=True,
    help="Largest image, width × height (checked before decoding).",
)
@click.option(
    "--api-key",
    envvar="TEXTMASK_API_KEY",
    metavar="KEY",
    help="Require this key on /v1/* and /metrics (Authorization: Bearer KEY, or X-API-Key) [env: TEXTMASK_API_KEY].",
)
@click.option(
    "--cors",
    multiple=True,
    metavar="ORIGIN",
    help="Let web pages from ORIGIN call the API (repeatable; * for any). Default: same origin only.",
)
@click.option(
    "--forwarded-allow-ips",
    metavar="IPS",
    help="Proxies whose X-Forwarded-For/-Proto are trusted (comma-separated, * for any) [default: 127.0.0.1].",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM, seconds to let requests in flight finish.",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log one line per request.")
def serve_command(**options: object) -> None:
    """Serve masks over HTTP, with a web page at / and the API docs at /docs.

    \b
    POST /v1/mask (multipart: image, prompt..., options) → the PNG `textmask mask FILE -p ... --combine union`
    writes; GET /v1/info, /healthz, /readyz, /metrics. Concurrent requests share one engine call.
    Quick start (random weights, meaningless masks):
      textmask serve --model random-tiny
      curl -F image=@examples/images/cat-on-lawn.png -F prompt="a cat" localhost:8000/v1/mask -o mask.png
    See docs/serve.md for limits, the API key, proxies and scaling out.
    """
    try:
        server = importlib.import_module("textmask.serve")
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_PACKAGES:
            raise
        err(f"textmask serve needs the serve extra: pip install 'textmask[serve]' ({exc.name} is missing)")
        sys.exit(EXIT_CANNOT_RUN)
    from ..errors import TextmaskError

    host = str(options["host"])
    if host not in ("127.0.0.1", "localhost", "::1") and not options.get("api_key"):
        err(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the server")
    options["cors"] = tuple(options["cors"])  # type: ignore[arg-type]
    quiet_libraries()
    try:
        server.serve(**options)
    except TextmaskError as exc:
        err(str(exc))
        sys.exit(EXIT_CANNOT_RUN)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except SystemExit as exc:  # uvicorn could not bind (port in use...): it has said why
        if exc.code not in (0, None):
            sys.exit(EXIT_CANNOT_RUN)
        raise
    except Exception as exc:
        if os.environ.get("TEXTMASK_DEBUG"):
            raise
        err(f"unexpected error: {type(exc).__name__}: {exc} (TEXTMASK_DEBUG=1 shows the traceback)")
        sys.exit(EXIT_CANNOT_RUN)
