"""``textmask download``: fetch a model into the cache and check that it loads (the work is
:func:`textmask.model.download_model` and :func:`textmask.engine.verify_model`)."""

from __future__ import annotations

import json
import sys
import time

import click

from ..constants import DEFAULT_MODEL, RANDOM_SOURCES
from .app import CONTEXT, EXIT_CANNOT_RUN, err, main, quiet_libraries


@main.command("download", context_settings=CONTEXT)
@click.argument("model", default=DEFAULT_MODEL)
@click.option(
    "--dir",
    "cache_dir",
    type=click.Path(file_okay=False),
    help="Hugging Face cache folder to download into (default: the standard cache; ComfyUI: models/clipseg).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def download_command(model: str, cache_dir: str | None, as_json: bool) -> None:
    """Fetch a model's weights (safetensors, configs, tokenizer) into the cache and check that they load.

    MODEL is a Hugging Face id (default CIDAS/clipseg-rd64-refined), random-tiny / random-full (built
    locally, no download), or a local folder (only verified).
    """
    quiet_libraries()
    from ..batch.job import RANDOM_NOTE
    from ..engine import verify_model
    from ..errors import TextmaskError
    from ..model import download_model

    started = time.perf_counter()
    try:
        folder, action = download_model(model, cache_dir)
        checked = verify_model(folder)
    except TextmaskError as exc:
        err(str(exc))
        sys.exit(EXIT_CANNOT_RUN)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    result = {
        "command": "download",
        "model": model,
        "path": str(folder),
        "action": action,
        "files": [p.name for p in files],
        "size_mb": round(size / 1e6, 1),
        "verified": checked,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"{model}: {action}; {len(files)} files, {size / 1e6:.1f} MB in {folder}")
        click.echo(f"verified: {checked}")
        if model in RANDOM_SOURCES:
            click.echo(f"note: {RANDOM_NOTE.format(model=model)}")
