"""Let another venv use this venv's torch: symlink torch and what it requires into a folder, and name that folder
in a ``.pth`` file of the other venv. CI makes three venvs; a copy of torch each is 850 MB, and CI's disk is small.

Run with the venv that has torch: ``.venv/bin/python .ci/share_torch.py FARM OTHER_SITE_PACKAGES``.
The other venv sees exactly that torch (``pip`` there counts it as installed) and none of this venv's other
packages; what it installs itself comes first on its ``sys.path``.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement


def closure(root: str) -> list[metadata.Distribution]:
    """``root`` and every distribution it requires (no extras), each once."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        dist = metadata.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def main(farm: Path, other_site_packages: Path) -> None:
    farm.mkdir(parents=True, exist_ok=True)
    for dist in closure("torch"):
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            source = Path(dist.locate_file(top))
            link = farm / top
            if source.exists() and not link.exists():
                link.symlink_to(source.resolve())
    (other_site_packages / "shared-torch.pth").write_text(f"{farm.resolve()}\n")
    print(f"{other_site_packages.parent.parent.parent.name}: torch {metadata.version('torch')} shared from {farm}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
