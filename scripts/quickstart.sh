#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job on the built-in example.
#   - makes .venv with torch (CPU build on this project's machines) and textmask with the extras the tests use
#     (cli, video, ray, serve, dev, openvino-quantize), so the README's test command runs the whole suite
#   - masks examples/images/cat-on-lawn.png for two prompts with the random-weight model `random-tiny`
#     (built offline; its masks are meaningless: real use takes CIDAS/clipseg-rd64-refined, which
#     downloads automatically when the machine is online — drop `--model random-tiny`).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[cli,video,ray,serve,dev,openvino-quantize]"

.venv/bin/textmask mask examples/images/cat-on-lawn.png -p "a cat" -p "the sky" --model random-tiny -o out/
echo "Masks written to out/ (random weights: meaningless). For real masks: .venv/bin/textmask mask IMAGE -p 'a cat' -o out/"
