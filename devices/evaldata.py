"""What `hiap bench --data` evaluates: the images, and whether they are the split the run validated on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.runtime.data import (
    SUBSET_SELECTION,
    Preprocessing,
    builtin_fingerprint,
    builtin_val_batches,
    image_folder_batches,
    resolve_image_folder,
    split_fingerprint,
)


@dataclass(frozen=True)
class EvalData:
    """What --data names: 'builtin', or the class-folder tree to evaluate (a training root's val/)."""

    spec: str
    folder: Path | None
    note: str = ""

    @classmethod
    def resolve(cls, spec: str) -> EvalData:
        if spec == "builtin":
            return cls(spec, None)
        root = Path(spec)
        if not root.is_dir():  # before minutes of latency measurement, not after
            raise HiapError(f"--data '{spec}' is not a folder: pass 'builtin', the root `hiap train --data` took "
                            "(ROOT/val/<class>/<image>) or a class-folder tree (ROOT/<class>/<image>).")  # fmt: skip
        folder = resolve_image_folder(root)  # what `hiap train --data` takes: the split it validated on
        return cls(spec, folder, f"training root: evaluated its val/ ({folder})" if folder != root else "")

    def batches(self, pre: Preprocessing, limit: int | None) -> Any:
        if self.folder is None:
            return builtin_val_batches(pre, limit=limit)
        return image_folder_batches(self.folder, pre, limit=limit)

    def fingerprint(self, limit: int | None = None) -> dict[str, Any]:
        return builtin_fingerprint(limit) if self.folder is None else split_fingerprint(self.folder, limit)


def _describe_split(fp: dict[str, Any]) -> str:
    what = "built-in split" if fp.get("data") == "builtin" else "ImageFolder split"
    return f"{what} of {fp.get('images')} images, classes {list(fp.get('classes') or [])[:5]}"


def same_split(meta: dict[str, str], data: EvalData, limit: int | None) -> tuple[dict[str, Any], str | None]:
    """The evaluated images' fingerprint against the one the export recorded of the run's validation split, and
    why they differ (None: the same images, so the run's validation accuracy is a like-for-like reference)."""
    try:
        recorded = parse_json(meta.get("val_split", "null"), "metadata 'val_split'")
    except HiapError:
        recorded = None
    evaluated = data.fingerprint(limit)
    split: dict[str, Any] = {"evaluated": evaluated, "recorded": recorded, "same": False}
    whole = evaluated
    if limit is not None:  # a class-balanced subset (hiap.runtime.data.balanced_subset) of the whole split
        whole = data.fingerprint()
        split["subset"] = {"images": evaluated["images"], "of": whole["images"], "selection": SUBSET_SELECTION}
    if not isinstance(recorded, dict):
        why = ("the model's metadata records no validation split (a plan-only export, one made without the run's "
               "data, or by an older hiap); re-export from the run, or pass --compare DENSE.onnx")  # fmt: skip
        return split, why
    if evaluated == recorded:
        split["same"] = True
        return split, None
    if limit is not None and whole == recorded:
        return split, (f"--limit {limit} evaluates {evaluated['images']} of the {recorded['images']} images the "
                       "run validated on, so its validation accuracy does not apply")  # fmt: skip
    return split, (f"--data is not the split the run validated on ({_describe_split(evaluated)}; the run's: "
                   f"{_describe_split(recorded)})")  # fmt: skip
