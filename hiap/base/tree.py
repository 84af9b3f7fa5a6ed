"""Walking a user's image folders as torchvision's ImageFolder does (symbolic links followed), refusing link loops;
torch-free, so training and the device's bench list the same images."""

from __future__ import annotations

import os
from pathlib import Path

from hiap.base.errors import HiapError


def walk_files(top: Path) -> list[tuple[str, list[str]]]:
    """(folder, its file names) for `top` and every folder under it, links followed, sorted by folder: the order of
    `sorted(os.walk(top, followlinks=True))`, which ImageFolder reads. A link back to a folder already on the walk
    (a loop, or one folder reached twice) is refused: ImageFolder would read its images again and again, up to the
    system's path limit, under the wrong class (20 images counted as 820)."""
    seen: dict[str, str] = {}
    found, stack = [], [str(top)]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            raise HiapError(f"Data folder '{folder}' is '{seen[real]}' again (a symbolic link loop or a second link to "
                            "it): remove the link, or images would be read more than once.")  # fmt: skip
        seen[real] = folder
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise HiapError(f"Data folder '{folder}' cannot be read: {exc.strerror or exc}.") from None
        found.append((folder, [e.name for e in entries if not e.is_dir()]))
        stack.extend(e.path for e in entries if e.is_dir())
    return sorted(found)
