"""End to end in a real ComfyUI: the pack loads, the example workflows run, outputs land in /history and on disk.

Runs only when ``COMFYUI_DIR`` points at a ComfyUI checkout (skipped otherwise)::

    COMFYUI_DIR=/path/to/ComfyUI python -m pytest tests/test_comfy_integration.py -v

With ``COMFYUI_EXTRA_PACKS`` (checkouts of other packs, separated by ``os.pathsep``; each is linked into
``custom_nodes`` under its folder name) the interop tests run too: KJNodes (``ComfyUI-KJNodes``) and Impact Pack
(``ComfyUI-Impact-Pack``, with its subpack in ``impact_subpack``) fed by Mask to Instances, and Impact's
``CLIPSegDetectorProvider`` on textmask's ``CLIPSeg`` drop-in.

ComfyUI is started with ``COMFYUI_PYTHON`` (default: the Python running pytest) as
``main.py --cpu --listen 127.0.0.1 --port <free port>`` with ``HF_HUB_OFFLINE=1`` and a temporary
``--base-directory``: the pack is symlinked into its ``custom_nodes``, the tiny random model is placed in its
``models/clipseg`` as a Hugging Face cache (``models--CIDAS--clipseg-rd64-refined``), and inputs, outputs and
the database stay there too, so the checkout is never touched.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "examples" / "workflows"  # API format
TEMPLATES = ROOT / "example_workflows"  # UI format, where ComfyUI's Templates browser finds them
COMFYUI_DIR = os.environ.get("COMFYUI_DIR", "")
EXTRA_PACKS = [Path(p) for p in os.environ.get("COMFYUI_EXTRA_PACKS", "").split(os.pathsep) if p]

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(
        not COMFYUI_DIR or not (Path(COMFYUI_DIR) / "main.py").is_file(),
        reason="set COMFYUI_DIR to a ComfyUI checkout to run the ComfyUI integration test",
    ),
]

WIDGET_TYPES = {"STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, body: Any = None, timeout: float = 30) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:  # say why (ComfyUI's 400 names the node and input)
        raise AssertionError(f"{url}: HTTP {error.code}: {error.read().decode(errors='replace')[:2000]}") from None
    return json.loads(raw) if raw else None


def _test_image(path: Path, height: int = 150, width: int = 200) -> np.ndarray:
    """A smooth RGB picture saved as PNG; returns it as ComfyUI's LoadImage reads it, float32 [H, W, 3]."""
    generator = torch.Generator().manual_seed(3)
    coarse = torch.rand((1, 3, 5, 6), generator=generator)
    full = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)
    levels = (full[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(levels).save(path)
    return levels.astype(np.float32) / 255.0


def _cutout(path: Path, height: int = 90, width: int = 70) -> None:
    """An RGBA example: a smooth picture, opaque on an ellipse (the object), transparent around it."""
    generator = torch.Generator().manual_seed(8)
    coarse = torch.rand((1, 3, 4, 4), generator=generator)
    full = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(0, 1)
    levels = (full[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    ys, xs = np.mgrid[:height, :width]
    alpha = ((((ys - height / 2) / (height / 3)) ** 2 + ((xs - width / 2) / (width / 3)) ** 2) <= 1) * 255
    Image.fromarray(np.dstack([levels, alpha.astype(np.uint8)]), "RGBA").save(path)


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory, tiny_model_dir):
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    (base / "input").mkdir()
    link = base / "custom_nodes" / "textmask"
    link.symlink_to(ROOT, target_is_directory=True)
    for pack in EXTRA_PACKS:
        (base / "custom_nodes" / pack.name).symlink_to(pack.resolve(), target_is_directory=True)
    repo = base / "models" / "clipseg" / "models--CIDAS--clipseg-rd64-refined"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123456789abcdef")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    image = _test_image(base / "input" / "example.png")
    _cutout(base / "input" / "example-cutout.png")

    port = _free_port()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the pack must find its own src/
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log_path = base / "comfyui.log"
    command = [
        python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
        "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'comfyui.db'}",
    ]  # fmt: skip
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=COMFYUI_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                if _request(f"{url}/object_info/SaltCLIPSegMasking", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not come up with the textmask nodes:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, base=base, log=log_path, image=image, python=python)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        link.unlink()


def _run(comfyui: SimpleNamespace, prompt: dict[str, Any], timeout: float = 240) -> dict[str, Any]:
    """POST a prompt and wait for its /history entry."""
    graph = {key: {k: v for k, v in node.items() if k != "_meta"} for key, node in prompt.items()}
    answer = _request(f"{comfyui.url}/prompt", {"prompt": graph, "client_id": "textmask-test"})
    assert answer["node_errors"] == {}, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = _request(f"{comfyui.url}/history/{prompt_id}")
        if history and prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            entry = history[prompt_id]
            if entry["status"]["status_str"] in ("success", "error"):
                return entry
        time.sleep(0.3)
    pytest.fail(f"prompt {prompt_id} did not finish:\n{comfyui.log.read_text()[-4000:]}")


def _saved(comfyui: SimpleNamespace, entry: dict[str, Any], node: str) -> np.ndarray:
    (image,) = entry["outputs"][node]["images"]
    assert image["type"] == "output"
    path = comfyui.base / "output" / image["subfolder"] / image["filename"]
    assert path.is_file(), path
    return np.asarray(Image.open(path).convert("RGB"))


def _saved_all(comfyui: SimpleNamespace, entry: dict[str, Any], node: str) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(comfyui.base / "output" / image["subfolder"] / image["filename"]).convert("RGB"))
        for image in entry["outputs"][node]["images"]
    ]


def _expected_seed_mask(comfyui: SimpleNamespace, model_dir: Path, text: str) -> np.ndarray:
    """The seed node's algorithm (tests/seed_reference.py) run in ComfyUI's own Python on the input image:
    ``[H, W]`` in [0, 1]."""
    out = comfyui.base / f"expected-{len(text)}-{abs(hash(text))}.npy"
    script = Path(__file__).with_name("seed_reference.py")
    subprocess.run(
        [comfyui.python, str(script), str(model_dir), str(comfyui.base / "input" / "example.png"), text, str(out)],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        timeout=120,
    )
    return np.load(out)


def _levels_apart(saved: np.ndarray, expected: np.ndarray) -> int:
    return int(np.abs(saved[..., 0].astype(np.int16) - np.round(expected * 255).astype(np.int16)).max())


def test_the_pack_registers_its_nodes(comfyui):
    from textmask.comfy import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    log = comfyui.log.read_text()
    ours = [line for line in log.splitlines() if "custom_nodes" in line and line.rstrip().endswith("textmask")]
    assert ours and not [line for line in ours if "IMPORT FAILED" in line], ours  # textmask's own import line
    assert "textmask: registered drop-ins for biegert's ComfyUI-CLIPSeg: CLIPSeg, CombineSegMasks" in log
    for name, cls in NODE_CLASS_MAPPINGS.items():
        info = _request(f"{comfyui.url}/object_info/{urllib.parse.quote(name)}")[name]
        assert info["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[name]
        assert info["category"] == cls.CATEGORY
        assert tuple(info["output"]) == cls.RETURN_TYPES and tuple(info["output_name"]) == cls.RETURN_NAMES
        declared = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            assert info["input_order"].get(section, []) == list(declared.get(section, {})), (name, section)
    loader = _request(f"{comfyui.url}/object_info/TextmaskCLIPSegLoader")["TextmaskCLIPSegLoader"]
    assert loader["input"]["required"]["model"][0] == ["CIDAS/clipseg-rd64-refined"]  # found in models/clipseg


def test_seed_workflow_runs_and_saves_the_seed_mask(comfyui, tiny_model_dir):
    prompt = json.loads((WORKFLOWS / "salt_clipseg_masking_api.json").read_text())
    prompt["3"]["inputs"]["text"] = "a cat"
    entry = _run(comfyui, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = _saved(comfyui, entry, "4")
    assert saved.shape == comfyui.image.shape  # resized to the input's size
    expected = _expected_seed_mask(comfyui, tiny_model_dir, "a cat")
    assert _levels_apart(saved, expected) <= 1  # within 1/255 of the seed algorithm in the same environment
    assert (saved[..., 0] == saved[..., 2]).all() and saved.std() > 5


def test_refine_mask_fed_by_the_drop_in_node(comfyui, tiny_model_dir):
    """Load Image → Salt loader → Batch Image CLIPSeg Masking → Refine Mask (textmask) → Save, and the refined
    mask split by Mask to Instances: it equals textmask.refine of the seed node's own mask."""
    import textmask

    prompt = json.loads((WORKFLOWS / "salt_clipseg_refine_api.json").read_text())
    prompt["3"]["inputs"]["text"] = "a cat"
    entry = _run(comfyui, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    refined = _saved(comfyui, entry, "6")
    assert refined.shape == comfyui.image.shape and (refined[..., 0] == refined[..., 2]).all()
    seed = torch.from_numpy(_expected_seed_mask(comfyui, tiny_model_dir, "a cat")).float()
    expected = textmask.refine(torch.from_numpy(comfyui.image)[None], seed[None])[0]
    apart = np.abs(refined[..., 0].astype(np.int16) - np.round(expected.numpy() * 255).astype(np.int16))
    assert np.mean(apart <= 1) > 0.99  # the seed's mask within 1/255, refined: the same refined mask
    instances = _saved_all(comfyui, entry, "9")
    found = textmask.instances(torch.from_numpy(refined[..., 0] / 255.0).float(), threshold=0.5, min_area=64)
    assert len(instances) == max(1, len(found))


def test_default_model_and_free_memory_then_run_again(comfyui, tiny_model_dir):
    """No clipseg_model: the default model from models/clipseg; after POST /free ComfyUI reloads it."""
    prompt = json.loads((WORKFLOWS / "salt_clipseg_masking_api.json").read_text())
    del prompt["2"]
    prompt["3"]["inputs"] = {"images": ["1", 0], "text": "a dog"}
    first = _run(comfyui, prompt)
    assert first["status"]["status_str"] == "success", first["status"]
    _request(f"{comfyui.url}/free", {"unload_models": True, "free_memory": True})
    prompt["3"]["inputs"]["text"] = "a bird"
    second = _run(comfyui, prompt)
    assert second["status"]["status_str"] == "success", second["status"]
    expected = _expected_seed_mask(comfyui, tiny_model_dir, "a bird")
    assert _levels_apart(_saved(comfyui, second, "4"), expected) <= 1


def test_advanced_workflow_runs(comfyui):
    prompt = json.loads((WORKFLOWS / "textmask_clipseg_masking_api.json").read_text())
    entry = _run(comfyui, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    mask = _saved(comfyui, entry, "4")
    heatmap = _saved(comfyui, entry, "5")
    assert mask.shape == heatmap.shape == comfyui.image.shape
    assert (mask[..., 0] == mask[..., 1]).all() and not (heatmap[..., 0] == heatmap[..., 2]).all()


def test_example_workflows_run(comfyui):
    """Masking by example (a cut-out, its Load Image MASK inverted), and text blended with the example."""
    prompt = json.loads((WORKFLOWS / "textmask_example_masking_api.json").read_text())
    prompt["6"] = {
        "class_type": "TextmaskCLIPSegMasking",
        "inputs": {
            "images": ["1", 0], "prompts": "a person", "negative_prompts": "", "combine": "union",
            "normalize": "minmax", "threshold": 0.0, "blur": 0.0, "grow": 0, "invert": False, "batch_size": 8,
            "example": ["2", 0], "example_mask": ["2", 1], "invert_example_mask": True, "example_mode": "blend",
            "example_weight": 2.0,
        },
    }  # fmt: skip
    prompt["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": "textmask/blend"}}
    entry = _run(comfyui, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    by_example, blended = _saved(comfyui, entry, "4"), _saved(comfyui, entry, "7")
    assert by_example.shape == blended.shape == comfyui.image.shape
    assert (by_example[..., 0] == by_example[..., 2]).all() and by_example.std() > 5
    assert np.abs(by_example.astype(int) - blended).max() > 2  # the text changed the prompt
    heatmap = _saved(comfyui, entry, "5")
    assert not (heatmap[..., 0] == heatmap[..., 2]).all()

    prompt["3"]["inputs"]["invert_example_mask"] = False  # the cut-out's outside as the object: runs too
    prompt["3"]["inputs"]["example_crop"] = False
    assert _run(comfyui, prompt)["status"]["status_str"] == "success"
    prompt["3"]["inputs"]["example"] = ["1", 0]  # an RGB image's MASK is an empty 64×64: a clear error
    prompt["3"]["inputs"]["example_mask"] = ["1", 1]
    failed = _run(comfyui, prompt)
    assert failed["status"]["status_str"] == "error"
    errors = [m[1] for m in failed["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "TextmaskCLIPSegExampleMasking"
    assert "Load Image outputs for an image without transparency" in errors[0]["exception_message"]


def test_a_missing_model_fails_the_node_with_a_clear_message(comfyui):
    prompt = json.loads((WORKFLOWS / "salt_clipseg_masking_api.json").read_text())
    prompt["2"]["inputs"]["model"] = "nobody/no-such-clipseg"
    entry = _run(comfyui, prompt)
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_type"] == "SaltCLIPSegLoader"
    assert "nobody/no-such-clipseg" in errors[0]["exception_message"]
    assert "models/clipseg" in errors[0]["exception_message"]


def test_cancel_stops_the_node_between_chunks(comfyui):
    """POST /interrupt while a long batch runs: ComfyUI stops our node (the progress hook raises)."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 64, "height": 64, "crop": "disabled"},
        },
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 4096}},
        "4": {
            "class_type": "TextmaskCLIPSegMasking",
            "inputs": {
                "images": ["3", 0], "prompts": "a long run", "negative_prompts": "", "combine": "union",
                "normalize": "minmax", "threshold": 0.0, "blur": 0.0, "grow": 0, "invert": False, "batch_size": 1,
            },
        },
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 1], "filename_prefix": "textmask/long"}},
    }  # fmt: skip
    websocket = pytest.importorskip("websocket")  # websocket-client (selenium's dependency, in the dev extra)
    events = websocket.create_connection(f"{comfyui.url.replace('http', 'ws', 1)}/ws?clientId=textmask-test",
                                         timeout=120)  # fmt: skip
    try:
        answer = _request(f"{comfyui.url}/prompt", {"prompt": prompt, "client_id": "textmask-test"})
        prompt_id = answer["prompt_id"]
        while True:  # until ComfyUI reports progress inside our node (the upstream nodes are done by then)
            message = events.recv()
            if isinstance(message, str):
                event = json.loads(message)
                data = event.get("data") or {}
                if event.get("type") == "progress" and data.get("node") == "4" and data.get("value", 0) >= 1:
                    break
    finally:
        events.close()
    _request(f"{comfyui.url}/interrupt", {})
    deadline = time.monotonic() + 120
    while not ((history := _request(f"{comfyui.url}/history/{prompt_id}")) and prompt_id in history):
        assert time.monotonic() < deadline, "the interrupted prompt never reached ComfyUI's history"
        time.sleep(0.2)
    status = history[prompt_id]["status"]
    interrupted = [m[1] for m in status["messages"] if m[0] == "execution_interrupted"]
    assert status["status_str"] == "error" and interrupted, status
    assert interrupted[0]["node_type"] == "TextmaskCLIPSegMasking"


def _ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """What ComfyUI's frontend queues for a saved UI workflow (links + widget values), for plain nodes.

    A workflow saved before a node gained widgets has fewer values than widgets; like the frontend, the new
    (trailing) widgets then take their defaults."""
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        for section in ("required", "optional"):
            for name in info["input_order"].get(section, []):
                spec = info["input"][section][name]
                kind = "COMBO" if isinstance(spec[0], list) else spec[0]
                if kind not in WIDGET_TYPES or name in inputs:
                    continue
                options = spec[1] if len(spec) > 1 else {}
                default = options.get("default", spec[0][0] if kind == "COMBO" else None)
                inputs[name] = values.pop(0) if values else default
                if options.get("image_upload") or options.get("control_after_generate"):
                    values.pop(0)  # the upload button / "control after generate" value
        assert values == [], (node["type"], values)
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"]}
    return prompt


@pytest.mark.parametrize("name", ["salt_clipseg_masking", "textmask_clipseg_masking"])
def test_ui_workflows_match_their_api_versions(comfyui, name):
    ui = json.loads((TEMPLATES / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / f"{name}_api.json").read_text())
    object_info = _request(f"{comfyui.url}/object_info")
    converted = _ui_to_api(ui, object_info)
    assert converted == {key: {k: v for k, v in node.items() if k != "_meta"} for key, node in api.items()}
    for link in ui["links"]:  # link types match the declared output/input types
        origin = next(n for n in ui["nodes"] if n["id"] == link[1])
        assert origin["outputs"][link[2]]["type"] == link[5]
        target = next(n for n in ui["nodes"] if n["id"] == link[3])
        assert target["inputs"][link[4]]["type"] == link[5] and target["inputs"][link[4]]["link"] == link[0]


# ----------------------------------------------------------------------------------- templates
def test_the_templates_browser_lists_the_example_workflows(comfyui):
    templates = _request(f"{comfyui.url}/api/workflow_templates")
    expected = sorted(path.stem for path in TEMPLATES.glob("*.json"))
    assert sorted(templates["textmask"]) == expected and len(expected) >= 4
    for name in expected:  # served where the frontend fetches them, each with its thumbnail
        workflow = _request(f"{comfyui.url}/api/workflow_templates/textmask/{name}.json")
        assert workflow["nodes"] and workflow["links"] is not None  # UI format, not API format
        with urllib.request.urlopen(f"{comfyui.url}/api/workflow_templates/textmask/{name}.jpg", timeout=30) as answer:
            assert answer.headers["Content-Type"] == "image/jpeg" and 1000 < len(data := answer.read()) < 100_000
        assert Image.open(io.BytesIO(data)).size == (512, 512)  # square, like the browser's cards


# --------------------------------------------------------------------- saved workflows of other packs
def _pack_reference(comfyui: SimpleNamespace, model_dir: Path) -> dict[str, np.ndarray]:
    """biegert's and WAS's algorithms (tests/clipseg_packs_reference.py) in ComfyUI's own Python."""
    out = comfyui.base / "packs-reference.npz"
    if not out.exists():
        script = Path(__file__).with_name("clipseg_packs_reference.py")
        subprocess.run(
            [comfyui.python, str(script), str(model_dir), str(comfyui.base / "input" / "example.png"), str(out)],
            check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=300,
        )  # fmt: skip
    return dict(np.load(out))


def _close(saved: np.ndarray, expected: np.ndarray) -> int:
    """Levels apart: SaveImage truncates to 8 bits, so a value within 1/255 may land 2 levels away."""
    levels = np.floor(np.clip(expected, 0, 1) * 255 + 1e-4).astype(np.int16)
    return int(np.abs(saved.astype(np.int16) - levels).max())


@pytest.mark.parametrize("name", ["biegert_clipseg_combine", "was_clipseg_masking"])
def test_saved_workflows_of_the_orphaned_packs_run_unchanged(comfyui, tiny_model_dir, name):
    object_info = _request(f"{comfyui.url}/object_info")
    prompt = _ui_to_api(json.loads((TEMPLATES / f"{name}.json").read_text()), object_info)
    entry = _run(comfyui, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    expected = _pack_reference(comfyui, tiny_model_dir)
    if name.startswith("biegert"):
        assert _close(_saved(comfyui, entry, "5"), expected["biegert_bw"][0]) <= 2
        assert _close(_saved(comfyui, entry, "6"), expected["biegert_combined"][0]) <= 2
    else:
        assert _close(_saved(comfyui, entry, "4"), expected["was_mask"][0]) <= 2
        batch = _saved_all(comfyui, entry, "6")
        assert len(batch) == 2 and all(_close(s, e) <= 2 for s, e in zip(batch, expected["was_batch"]))


# ------------------------------------------------------------------------ other packs, when given
needs_packs = pytest.mark.skipif(
    not {"ComfyUI-KJNodes", "ComfyUI-Impact-Pack"} <= {pack.name for pack in EXTRA_PACKS},
    reason="set COMFYUI_EXTRA_PACKS to checkouts of ComfyUI-KJNodes and ComfyUI-Impact-Pack",
)

FRAME_OBJECTS = [[(4, 14, 6, 26), (25, 33, 40, 46)], [], [(20, 36, 30, 50)]]  # [objects, empty, objects]: y0 y1 x0 x1


def _frames(comfyui: SimpleNamespace) -> np.ndarray:
    frames = np.full((3, 48, 64, 3), 64, dtype=np.uint8)
    for index, objects in enumerate(FRAME_OBJECTS):
        for y0, y1, x0, x1 in objects:
            frames[index, y0:y1, x0:x1] = 255
        Image.fromarray(frames[index]).save(comfyui.base / "input" / f"frame{index}.png")
    return frames


@needs_packs
def test_mask_to_instances_feeds_kjnodes_and_impact_frame_by_frame(comfyui):
    import textmask

    frames = _frames(comfyui)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "frame0.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "frame1.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "frame2.png"}},
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "5": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["3", 0]}},
        "6": {"class_type": "ImageToMask", "inputs": {"image": ["5", 0], "channel": "red"}},
        "7": {"class_type": "TextmaskMaskToInstances",
              "inputs": {"masks": ["6", 0], "threshold": 0.5, "min_area": 0, "max_instances": 0, "label": "box"}},
        "8": {"class_type": "BboxVisualize",
              "inputs": {"images": ["5", 0], "bboxes": ["7", 2], "line_width": 1, "bbox_format": "xywh"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "textmask/kj"}},
        "10": {"class_type": "BboxToInt", "inputs": {"bboxes": ["7", 2], "index": 2}},
        "11": {"class_type": "ImageCrop", "inputs": {"image": ["5", 0], "width": ["10", 2], "height": ["10", 3],
                                                     "x": ["10", 0], "y": ["10", 1]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "textmask/crop"}},
        "13": {"class_type": "SegsToCombinedMask", "inputs": {"segs": ["7", 5]}},
        "14": {"class_type": "MaskToImage", "inputs": {"mask": ["13", 0]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": "textmask/perframe"}},
        "16": {"class_type": "ImpactSEGSToMaskList", "inputs": {"segs": ["7", 3]}},
        "17": {"class_type": "MaskToImage", "inputs": {"mask": ["16", 0]}},
        "18": {"class_type": "SaveImage", "inputs": {"images": ["17", 0], "filename_prefix": "textmask/segs"}},
    }  # fmt: skip
    entry = _run(comfyui, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    drawn = _saved_all(comfyui, entry, "9")
    assert len(drawn) == 3  # one drawn frame per frame, the empty one included
    for index, (picture, objects) in enumerate(zip(drawn, FRAME_OBJECTS)):
        red = (picture[..., 0] == 255) & (picture[..., 1] == 0)
        expected = np.zeros((48, 64), dtype=bool)
        if objects:  # the frame's largest object, drawn on this frame
            y0, y1, x0, x1 = max(objects, key=lambda o: (o[1] - o[0]) * (o[3] - o[2]))
            expected[y0, x0:x1] = expected[y1, x0:x1] = expected[y0:y1, x0] = expected[y0:y1, x1] = True
        assert np.array_equal(red, expected), index
        assert np.array_equal(picture[~red], frames[index][~red])
    crops = _saved_all(comfyui, entry, "12")  # BboxToInt(index=2): frame 2's box, cropped from every frame
    assert len(crops) == 3 and all(crop.shape[:2] == (16, 20) for crop in crops)
    assert (crops[2] == 255).all()  # exactly frame 2's object
    per_frame = _saved_all(comfyui, entry, "15")  # SegsToCombinedMask once per frame
    assert len(per_frame) == 3
    for picture, frame in zip(per_frame, frames):
        assert np.array_equal(picture[..., 0] == 255, frame[..., 0] == 255)
    listed = _saved_all(comfyui, entry, "18")  # SEGSToMaskList of the batch SEGS: one mask per object
    found = textmask.instances(torch.from_numpy(frames[..., 0] / 255.0).float(), threshold=0.5)
    expected_masks = [mask for item in found for mask in item.masks]
    assert len(listed) == len(expected_masks) == 3
    for picture, mask in zip(listed, expected_masks):
        assert np.array_equal(picture[..., 0] > 0, mask.numpy() > 0)


@needs_packs
def test_impact_clipseg_detector_runs_on_the_clipseg_drop_in(comfyui, tiny_model_dir):
    import textmask

    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "CLIPSegDetectorProvider",
              "inputs": {"text": "a cat", "blur": 0.0, "threshold": 0.9, "dilation_factor": 0}},
        "3": {"class_type": "ImpactSimpleDetectorSEGS",
              "inputs": {"bbox_detector": ["2", 0], "image": ["1", 0], "bbox_threshold": 0.5, "bbox_dilation": 0,
                         "crop_factor": 3.0, "drop_size": 1, "sub_threshold": 0.5, "sub_dilation": 0,
                         "sub_bbox_expansion": 0, "sam_mask_hint_threshold": 0.7}},
        "4": {"class_type": "SegsToCombinedMask", "inputs": {"segs": ["3", 0]}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "textmask/detector"}},
    }  # fmt: skip
    entry = _run(comfyui, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    combined = _saved(comfyui, entry, "6")[..., 0]
    assert set(np.unique(combined)) <= {0, 255}
    mask = _pack_reference(comfyui, tiny_model_dir)["detector_mask"] > 0  # biegert's CLIPSeg on the same settings
    assert 0.02 < mask.mean() < 0.98, "a trivial mask would prove little"
    detected = combined == 255
    assert detected[mask].mean() > 0.99  # every object CLIPSeg found is in a SEGS
    boxes = np.zeros_like(mask)  # and nothing outside the objects' boxes (Impact fills each box)
    for x0, y0, x1, y1 in textmask.instances(torch.from_numpy(mask).float(), threshold=0.5).boxes.tolist():
        boxes[y0:y1, x0:x1] = True
    assert not (detected & ~boxes).any()
