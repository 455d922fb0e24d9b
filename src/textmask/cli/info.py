"""``textmask info``: versions, devices, threads, dtypes, where models are looked for and which are present
(the facts come from :func:`textmask.info.environment`)."""

from __future__ import annotations

import json

import click

from .app import CONTEXT, main


@main.command("info", context_settings=CONTEXT)
@click.option("--dir", "cache_dir", type=click.Path(file_okay=False), help="Also look in this Hugging Face cache.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def info_command(cache_dir: str | None, as_json: bool) -> None:
    """Versions, devices, threads, dtype support, where models are looked for and which are present."""
    from ..info import environment

    env = environment(cache_dir)
    if as_json:
        click.echo(json.dumps(env, indent=2))
        return
    echo = click.echo
    echo(f"textmask {env['textmask']}  (Python {env['python']}, {env['platform']})")
    echo(f"torch {env['torch']}, transformers {env['transformers']}, Pillow {env['pillow']}, PyAV {env['av'] or '-'}")
    echo(f"OpenVINO {env.get('openvino') or '- (pip install textmask[openvino])'}, NNCF {env.get('nncf') or '-'}")
    echo(f"devices (--device auto → {env['auto_device']}):")
    for device in env["devices"]:
        echo(f"  {device['name']}: {device['detail']}")
        dtypes = "; ".join(f"{name} {support}" for name, support in device["dtypes"].items() if name != "fast")
        echo(f"    dtypes: {dtypes}; --dtype fast → {device['dtypes']['fast']}")
    threads = env["threads"]
    echo(f"threads: {threads['intra_op']} intra-op, {threads['inter_op']} inter-op ({env['cpu_count']} CPUs)")
    search = env["model_search"]
    echo("models are looked for in:")
    echo("  a folder passed as --model (config.json + model.safetensors + tokenizer files)")
    if search["cache_dir"]:
        echo(f"  --dir / --cache-dir: {search['cache_dir']}")
    offline = " (offline: HF_HUB_OFFLINE is set)" if search["offline"] else " (downloads allowed)"
    echo(f"  Hugging Face cache: {search['huggingface_cache']}{offline}")
    echo(f"  textmask cache (random-tiny, random-full): {search['textmask_cache']}")
    echo(f"default model: {env['default_model']}")
    if env["models"]:
        echo("models present:")
        for found in env["models"]:
            note = "  [random weights: meaningless masks]" if found["random"] else ""
            pickle = "" if found["safetensors"] else "  [no safetensors: needs --allow-pickle]"
            echo(f"  {found['source']}  {found['size_mb']} MB  {found['path']}{note}{pickle}")
    else:
        echo("models present: none (run `textmask download`, or use --model random-tiny to try textmask offline)")
    checks = env.get("precision_checks") or []
    if checks:
        echo("reduced precisions checked against float32 on this machine (relative logit RMS, IoU at logit 0):")
        for check in checks:
            verdict = "holds" if check["holds"] else "does not hold: the next precision runs"
            echo(
                f"  {check['model']} {check['precision']}: {check['relative_logit_rms']:.4f}, "
                f"{check['iou_at_logit_0']:.4f} ({verdict})"
            )
    else:
        echo("reduced precisions checked: none yet (each is checked against float32 the first time it runs)")
