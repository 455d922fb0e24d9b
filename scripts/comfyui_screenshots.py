"""Screenshots of textmask in a real ComfyUI and its web frontend (Chromium through Selenium), and the example
workflows' thumbnails for ComfyUI's Templates browser.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/comfyui-venv/bin/python \\
        python scripts/comfyui_screenshots.py MODEL_DIR

MODEL_DIR is a CLIPSeg model folder (e.g. the random-tiny one); it is placed in a temporary base directory's
models/clipseg as CIDAS/clipseg-rd64-refined. Writes docs/images/comfyui-*.png and example_workflows/*.jpg (each
template's own graph, square like the Templates browser's cards). The Templates browser is photographed last, so
it shows the thumbnails just written.
Needs chromium and chromedriver (apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
TEMPLATES = ROOT / "example_workflows"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(base: Path, model_dir: Path) -> tuple[subprocess.Popen, str]:
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "textmask").symlink_to(ROOT, target_is_directory=True)
    repo = base / "models" / "clipseg" / "models--CIDAS--clipseg-rd64-refined"
    shutil.copytree(model_dir, repo / "snapshots" / "0123456789abcdef")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    (base / "input").mkdir()
    shutil.copy(ROOT / "examples" / "images" / "cat-on-lawn.png", base / "input" / "example.png")
    port = _port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1")
    command = [
        os.environ.get("COMFYUI_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
        "--port", str(port), "--disable-auto-launch", "--base-directory", str(base),
        "--database-url", f"sqlite:///{base / 'comfyui.db'}",
    ]  # fmt: skip
    log = open(base / "comfyui.log", "w")  # lives as long as the server
    process = subprocess.Popen(command, cwd=os.environ["COMFYUI_DIR"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(480):
        try:
            urllib.request.urlopen(f"{url}/object_info/TextmaskMaskToInstances", timeout=5)
            return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit((base / "comfyui.log").read_text()[-3000:])


def _browser(width: int = 1600, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "chromium"
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "chromedriver"))


def _load(driver, workflow: dict) -> None:
    driver.execute_script("return window.app.loadGraphData(arguments[0]);", workflow)
    time.sleep(1.5)
    driver.execute_script("window.app.canvas.ds.scale = 1; window.app.canvas.setDirty(true, true);")


def _fit(driver, square: bool = False) -> list[float]:
    """Centre the graph in the canvas at a scale that shows it all; returns its box on the page
    ``[left, top, right, bottom]`` in CSS pixels. With ``square``, the graph fits a centred square of 80 % of the
    canvas's height (clear of the menus at its edges), and that square's box is returned."""
    box = driver.execute_script(
        """
        const graph = window.app.graph, canvas = window.app.canvas, square = arguments[0];
        let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
        for (const node of graph._nodes) {
          x0 = Math.min(x0, node.pos[0]); y0 = Math.min(y0, node.pos[1] - 30);
          x1 = Math.max(x1, node.pos[0] + node.size[0]); y1 = Math.max(y1, node.pos[1] + node.size[1]);
        }
        const el = canvas.canvas, side = 0.8 * Math.min(el.width, el.height);
        const scale = square ? Math.min(1.1, 0.92 * side / (x1 - x0), 0.92 * side / (y1 - y0))
                             : Math.min(1.1, 0.8 * el.width / (x1 - x0), 0.75 * el.height / (y1 - y0));
        canvas.ds.scale = scale;
        canvas.ds.offset = [el.width / 2 / scale - (x0 + x1) / 2, el.height / 2 / scale - (y0 + y1) / 2];
        canvas.setDirty(true, true);
        const a = canvas.ds.convertOffsetToCanvas([x0, y0]), b = canvas.ds.convertOffsetToCanvas([x1, y1]);
        const rect = el.getBoundingClientRect(), ratio = el.width / rect.width;
        if (square) {
          const cx = el.width / 2 / ratio + rect.left, cy = el.height / 2 / ratio + rect.top, half = side / 2 / ratio;
          return [cx - half, cy - half, cx + half, cy + half];
        }
        return [a[0] / ratio + rect.left, a[1] / ratio + rect.top, b[0] / ratio + rect.left, b[1] / ratio + rect.top];
        """,
        square,
    )
    time.sleep(1.0)
    return box


def _hover_output(driver, node_type: str, output: str) -> None:
    """Rest the mouse on a node's output slot (synthetic pointer and mouse events on the canvas, as LiteGraph and
    the frontend's tooltip listen for them), long enough for the tooltip."""
    driver.execute_script(
        """
        const [type, name] = arguments;
        const node = window.app.graph._nodes.find(n => n.type === type);
        const slot = node.outputs.findIndex(o => o.name === name);
        const at = window.app.canvas.ds.convertOffsetToCanvas(node.getConnectionPos(false, slot));
        const el = window.app.canvas.canvas, rect = el.getBoundingClientRect(), ratio = el.width / rect.width;
        for (const dx of [0, 1]) {
          const init = {clientX: at[0] / ratio + rect.left - 6 + dx, clientY: at[1] / ratio + rect.top, bubbles: true,
                        cancelable: true, pointerId: 1, isPrimary: true, pointerType: 'mouse'};
          el.dispatchEvent(new PointerEvent('pointermove', init));
          el.dispatchEvent(new MouseEvent('mousemove', init));
        }
        """,
        node_type,
        output,
    )
    time.sleep(1.5)


def _open(driver, url: str) -> None:
    """Load the frontend and wait for its canvas."""
    driver.get(url)
    for _ in range(120):
        if driver.execute_script("return !!(window.app && window.app.graph && window.app.canvas)"):
            break
        time.sleep(0.5)
    time.sleep(3)


def main() -> None:
    model_dir = Path(sys.argv[1])
    base = Path(tempfile.mkdtemp(prefix="comfyui-shots-"))
    process, url = _start(base, model_dir)
    driver = _browser()
    try:
        # a new user's first page opens the Templates browser; the second one shows the canvas alone
        _open(driver, url)
        driver.execute_script(
            "const settings = window.app.ui.settings;"
            "settings.setSettingValue('Comfy.TutorialCompleted', true);"
            "settings.setSettingValue('Comfy.Minimap.Visible', false);"
            "settings.setSettingValue('LiteGraph.Canvas.MinFontSizeForLOD', 0);"  # titles and widgets at any zoom
        )
        time.sleep(2)
        _open(driver, url)
        if driver.find_elements("css selector", ".p-dialog"):
            raise SystemExit("a dialog covers the canvas; the thumbnails would show it")
        # thumbnails: each template's graph, fitted in a square, as a 512 x 512 JPEG
        from PIL import Image

        for path in sorted(TEMPLATES.glob("*.json")):
            _load(driver, json.loads(path.read_text()))
            left, top, right, bottom = _fit(driver, square=True)
            shot = base / f"{path.stem}.png"
            driver.save_screenshot(str(shot))
            picture = Image.open(shot).convert("RGB")
            ratio = picture.width / driver.execute_script("return window.innerWidth")
            picture = picture.crop((int(left * ratio), int(top * ratio), int(right * ratio), int(bottom * ratio)))
            picture.resize((512, 512), Image.Resampling.LANCZOS).save(path.with_suffix(".jpg"), quality=85)
        # the nodes, and an output tooltip
        _load(driver, json.loads((TEMPLATES / "textmask_mask_to_instances.json").read_text()))
        _fit(driver)
        driver.save_screenshot(str(IMAGES / "comfyui-nodes.png"))
        _hover_output(driver, "TextmaskMaskToInstances", "bboxes")
        driver.save_screenshot(str(IMAGES / "comfyui-output-tooltip.png"))
        # the Templates browser, textmask's entries, with the thumbnails written above: a fresh page with no
        # workflow tabs left over, tall enough for both rows of cards
        driver.execute_script("localStorage.clear(); sessionStorage.clear();")
        driver.set_window_size(1600, 1250)
        _open(driver, url)
        driver.execute_script("window.app.extensionManager.command.execute('Comfy.BrowseTemplates');")
        time.sleep(5)
        for _ in range(60):  # the extensions' templates load after the dialog opens
            entries = driver.find_elements("xpath", "//span[normalize-space()='textmask']")
            if entries:
                driver.execute_script("arguments[0].scrollIntoView(); arguments[0].click();", entries[0])
                break
            time.sleep(0.5)
        time.sleep(3)
        driver.save_screenshot(str(IMAGES / "comfyui-templates.png"))
    finally:
        driver.quit()
        process.terminate()
        process.wait(timeout=30)
    print(
        "wrote", sorted(p.name for p in IMAGES.glob("comfyui-*.png")), sorted(p.name for p in TEMPLATES.glob("*.jpg"))
    )


if __name__ == "__main__":
    main()
