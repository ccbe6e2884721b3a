"""Exceptions raised by the dataset readers, the generator and the validator.

Every error names the offending file (or key) and says what was expected, so
that a failed ``prepare`` job tells the user what to fix without a debugger.
"""

from __future__ import annotations

# The void label, as the readers import it (eroseg.conventions imports neither torch nor the pipeline).
from eroseg.conventions import IGNORE_INDEX  # noqa: F401


class DatasetError(ValueError):
    """A dataset on disk does not have the expected layout or content."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A file or folder the dataset needs is missing.

    Subclasses both :class:`DatasetError` (so one ``except DatasetError``
    catches every data problem) and :class:`FileNotFoundError` (so generic
    callers that test for missing files still work).
    """


def layout_hint(root, markers: tuple[str, ...], *, depth: int = 2, max_folders: int = 2000) -> str:
    """A "did you mean" sentence naming folders near ``root`` that hold the expected layout, else ``""``.

    A root given one or two folders too high (``VOCdevkit`` instead of ``VOCdevkit/VOC2012``) or too low
    (``VOC2012/JPEGImages``) is the usual mistake. Searched: the folders below ``root`` down to ``depth``
    levels (at most ``max_folders`` of them, hidden ones skipped, so a huge tree stays quick) and the
    ``depth`` folders above it. A folder qualifies when every path in ``markers`` (relative, e.g.
    ``"ImageSets/Segmentation"``) exists under it.
    """
    from pathlib import Path

    root = Path(root)

    def holds(folder: Path) -> bool:
        return all((folder / m).exists() for m in markers)

    found: list[Path] = []
    level, seen = [root], 0
    for _ in range(depth):
        below = []
        for folder in level:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            for child in children:
                seen += 1
                if seen > max_folders:
                    break
                (found if holds(child) else below).append(child)
        level = below
    found += [p for p in list(root.resolve().parents)[:depth] if holds(p)]
    if not found:
        return ""
    names = " or ".join(str(p) for p in found[:3])
    layout = ", ".join(f"{m}/" for m in markers)
    return f" Did you mean {names}? It holds {layout}: use it as the dataset root (dataset.root in the config)."
