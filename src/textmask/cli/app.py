"""The ``textmask`` command group and what every sub-command shares: messages, warnings, Ctrl-C, the
progress bar, exit codes. Each sub-command lives in its own module (:mod:`.mask`, :mod:`.download`,
:mod:`.info`, :mod:`.serve`) and holds declarations and calls only.

Exit codes: 0 all done; 1 some inputs failed (the others were written); 2 usage error; 3 could not start
or had to stop (model missing or broken, output folder not writable, disk full); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any, NoReturn

import click

from .. import __version__
from ..constants import BACKENDS, DEFAULT_MODEL, DTYPES

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


_MODEL_OPTIONS = (
    click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True, help="Hub id, folder, or random-tiny."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps."),
    click.option(
        "--dtype",
        type=click.Choice(list(DTYPES)),
        default="float32",
        show_default=True,
        help="fast: the quickest precision that agrees well here (CPU: OpenVINO bfloat16 when installed and the CPU "
        "has bf16, else torch int8; GPU: float16). int8: OpenVINO (quantized once, cached).",
    ),
    click.option(
        "--backend",
        type=click.Choice(list(BACKENDS)),
        default="auto",
        show_default=True,
        help="What runs the vision tower. openvino: CPU only, pip install 'textmask[openvino]' (converted once and "
        "cached). auto: openvino for --dtype fast/int8 on a CPU where it pays, else torch.",
    ),
    click.option("--cache-dir", type=click.Path(file_okay=False), help="Hugging Face cache to look in."),
    click.option("--allow-pickle", is_flag=True, help="Also load pytorch_model.bin weights (trusted sources only)."),
)


def model_options(command: Any) -> Any:
    """The model options every command that loads a model takes: ``-m/--model``, ``--device``, ``--dtype``,
    ``--backend``, ``--cache-dir``, ``--allow-pickle`` (as :func:`textmask.load` takes them)."""
    for option in reversed(_MODEL_OPTIONS):
        command = option(command)
    return command


def err(message: str) -> None:
    click.echo(f"textmask: {message}", err=True)


def quiet_libraries() -> None:
    """Route textmask's log and warnings to stderr as one-liners."""
    logger = logging.getLogger("textmask")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("textmask: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


class ShowWarnings:
    """Show Python warnings (long or empty prompts...) as ``textmask: warning: ...`` and keep them."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __enter__(self) -> ShowWarnings:
        self._saved = warnings.showwarning
        warnings.showwarning = self._show  # type: ignore[assignment]
        return self

    def _show(self, message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None):
        text = str(message)
        if text not in self.messages:
            self.messages.append(text)
            err(f"warning: {text}")

    def __exit__(self, *exc: object) -> None:
        warnings.showwarning = self._saved


class StopOnInterrupt:
    """First Ctrl-C: finish the current batch, then stop. Second Ctrl-C: stop now (temp files are removed)."""

    def __init__(self, announce: bool) -> None:
        self.requested = False
        self.announce = announce
        self._saved: Any = None

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._saved = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            err("stopping after the current batch (Ctrl-C again to stop at once)")

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            signal.signal(signal.SIGINT, self._saved)

    def __call__(self) -> bool:
        return self.requested


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="textmask")
def main() -> None:
    """textmask: text-prompted segmentation masks (CLIPSeg) for images, folders and videos.

    \b
    Quick start (offline; random weights, so the mask itself is meaningless):
      textmask mask examples/images/cat-on-lawn.png -p "a cat" --model random-tiny -o out/
    Real masks (downloads CIDAS/clipseg-rd64-refined once, ~600 MB):
      textmask download
      textmask mask photos/ -p "a cat" -p "a dog" -o masks/
    """


def run(args: list[str] | None = None) -> NoReturn:
    """The ``textmask`` program: run the command line, then leave without tearing the interpreter down.

    Freeing torch's modules and objects one by one at exit takes 0.4-0.6 s, a fifth of a short run; the
    process is ending, so that work is skipped: other threads are joined, ``atexit`` handlers run (Ray's
    shutdown, logging), standard streams are flushed, then ``os._exit``. Every output file is already
    complete and closed by then (atomic writes). ``TEXTMASK_DEBUG=1`` exits the usual way.
    """
    try:
        main.main(args=args, prog_name="textmask")
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    if os.environ.get("TEXTMASK_DEBUG"):
        sys.exit(code)
    exit_now(code)


#: How long :func:`exit_now` waits, in all, for the threads still running once their shutdown hooks have run.
THREAD_JOIN_SECONDS = 5.0


def exit_now(code: Any, join_seconds: float = THREAD_JOIN_SECONDS) -> NoReturn:
    """End the process with ``code`` (as ``sys.exit`` takes it) after the threads, ``atexit`` and the flushes.

    The interpreter's own shutdown first runs the hooks that libraries register with ``threading`` (an idle
    ``concurrent.futures`` worker, such as the one ``import openvino`` starts, stops only when its hook tells
    it to), then joins the non-daemon threads. This does the same, but waits at most ``join_seconds`` in all
    for the threads: a thread that textmask did not start and cannot stop never keeps the process alive.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    deadline = time.monotonic() + join_seconds
    hooks = threading.Thread(target=run_thread_shutdown_hooks, name="textmask-exit", daemon=True)
    hooks.start()  # in a thread of its own: a hook that joins a busy worker waits no longer than the deadline
    hooks.join(join_seconds)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon and thread is not hooks:
            thread.join(max(0.0, deadline - time.monotonic()))
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(status)


def run_thread_shutdown_hooks() -> None:
    """Run the callbacks registered with ``threading._register_atexit`` (newest first, as the interpreter does):
    ``concurrent.futures`` uses them to wake its idle workers and let them end. Each runs once; one that fails
    is reported on stderr and the rest still run."""
    hooks = getattr(threading, "_threading_atexits", None)
    if not hooks:
        return
    threading._SHUTTING_DOWN = True  # type: ignore[attr-defined]  # no new hooks (or executors) from now on
    for hook in reversed(list(hooks)):
        try:
            hook()
        except Exception as exc:  # a library's hook: say so, and go on leaving
            print(f"textmask: a thread shutdown hook failed: {exc!r}", file=sys.stderr)
    hooks.clear()


def run_with_progress(discovery: Any, show: bool, run: Any) -> Any:
    """``run(progress, on_failure)`` with a tqdm bar on stderr (items/s, ETA) when ``show``; failures are
    printed as they come."""
    from tqdm import tqdm

    from ..batch import Failure

    unit = "item" if any(item.kind == "video" for item in discovery.items) else "img"  # videos count frames
    bars: list[Any] = []

    def progress(done: int, total: int) -> None:
        if not show:
            return
        if not bars:
            bars.append(tqdm(total=total, unit=unit, dynamic_ncols=True, file=sys.stderr, smoothing=0.1))
        bar = bars[0]
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    def failed(failure: Failure) -> None:
        message = failure_line(failure)
        if bars:
            bars[0].write(f"textmask: failed: {message}", file=sys.stderr)
        else:
            err(f"failed: {message}")

    try:
        return run(progress, failed)
    finally:
        for bar in bars:
            bar.close()


def failure_line(failure: Any) -> str:
    """The error alone when it names the input already, else ``input: error``."""
    return failure.error if failure.input in failure.error else f"{failure.input}: {failure.error}"


def exit_code(report: Any) -> int:
    if report.interrupted:
        return EXIT_INTERRUPTED
    if report.fatal:
        return EXIT_CANNOT_RUN
    return EXIT_FAILED if report.failures else EXIT_OK


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def print_summary(report: Any, outdir: str, total_seconds: float) -> None:
    if report.fatal:
        err(report.fatal)
    rate = ""
    if report.seconds > 0 and report.units:
        what = "images and frames" if report.frames else "images"
        rate = f" ({report.units / report.seconds:.1f} {what}/s)"
    parts = [f"{report.processed} masked", f"{report.skipped} skipped (outputs exist)"]
    if report.failures:
        parts.append(f"{report.failed} failed")
    if report.ignored:
        parts.append(f"{report.ignored} other files ignored")
    click.echo(
        f"textmask: {', '.join(parts)}; {plural(len(report.written), 'file')} written to {outdir} "
        f"in {total_seconds:.1f} s{rate}" + ("; interrupted, run again to resume" if report.interrupted else "")
    )
    if report.failures:
        click.echo(f"failed ({report.failed}):")
        for failure in report.failures:
            message = failure_line(failure)
            click.echo(f"  {message}")
