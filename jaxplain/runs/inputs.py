"""The command line's INPUT arguments as a list of image files: files, folders, globs, ``@list.txt``.

A folder is searched recursively for image files (by suffix, case ignored); a glob (``*``, ``?``,
``[``; ``**`` crosses folders) keeps the files it matches; ``@list.txt`` reads one path per line
(blank lines and ``#`` comments skipped; relative paths from the current folder). The result is
sorted within each argument, in argument order, each file once. An argument that names nothing
(or only files inside the run's own output folder), and a subfolder that cannot be read, is a
``Problem``: the command reports it and goes on with the others.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path
from typing import NamedTuple, Sequence

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif")


class Problem(NamedTuple):
    """An argument that names no file: the argument and why."""

    argument: str
    message: str


class Found(NamedTuple):
    """The files the arguments name (``Path``s as found, resolved-unique) and the problems."""

    files: list[Path]
    problems: list[Problem]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder(path: Path) -> tuple[list[Path], list[str]]:
    """The image files below ``path`` (sorted) and a message per folder that could not be listed."""
    found, unreadable = [], []

    def note(e: OSError) -> None:
        unreadable.append(f"cannot read the folder {e.filename} ({e.strerror or e}): its images were left out")

    for folder, _, names in os.walk(path, onerror=note):
        found.extend(Path(folder) / n for n in names if _is_image(Path(n)) and os.path.isfile(os.path.join(folder, n)))
    return sorted(found), unreadable


def _one(argument: str) -> tuple[list[Path], str | None]:
    if argument.startswith("@"):
        listing = Path(argument[1:])
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            return [], f"cannot read the list {listing} ({getattr(e, 'strerror', None) or e})"
        names = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        return [Path(n) for n in names], None if names else f"the list {listing} names no files"
    if glob.has_magic(argument):
        matched = sorted(Path(p) for p in glob.glob(argument, recursive=True) if os.path.isfile(p))
        return matched, None if matched else "no file matches this pattern"
    path = Path(argument)
    if path.is_dir():
        found, unreadable = _folder(path)
        if unreadable or found:
            return found, "; ".join(unreadable) or None
        return found, f"a folder with no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...)"
    if not path.exists():
        return [], "no such file or folder"
    return [path], None


def expand(arguments: Sequence[str], exclude: str | os.PathLike | None = None) -> Found:
    """Every file the ``arguments`` name, once (by resolved path), and the arguments naming none;
    files below the folder ``exclude`` (the run's own output folder) are left out, and an argument
    whose files all lie there is a problem that says so."""
    files, problems, seen = [], [], set()
    below = os.path.join(os.path.realpath(exclude), "") if exclude is not None else None
    for argument in arguments:
        paths, problem = _one(argument)
        kept = [p for p in paths if below is None or not os.path.realpath(p).startswith(below)]
        if paths and not kept:
            problem = "; ".join(filter(None, [problem, _all_excluded(len(paths), exclude)]))
        if problem:
            problems.append(Problem(argument, problem))
        for p in kept:
            key = os.path.realpath(p)
            if key not in seen:
                seen.add(key)
                files.append(p)
    return Found(files, problems)


def _all_excluded(n: int, out: str | os.PathLike) -> str:
    files = f"its {n} image files are" if n > 1 else "its image file is"
    return (f"{files} inside the output folder {out}, whose files a run never reads (they could be its own "
            "results): nothing left to explain; write the results elsewhere (--out)")


def output_names(files: Sequence[Path]) -> list[str]:
    """A distinct relative name per file, with "/" separators and no suffix: its path below the
    files' common folder, keeping the suffix (``cat.jpg`` -> ``cat.jpg``) only where two files of
    one folder share a stem (``cat.jpg`` and ``cat.png``)."""
    if not files:
        return []
    resolved = [Path(os.path.realpath(p)) for p in files]
    parents = [str(p.parent) for p in resolved]
    root = Path(os.path.commonpath(parents))
    stems = Counter((p.parent, p.stem) for p in resolved)
    full = [stems[(p.parent, p.stem)] > 1 or not p.stem for p in resolved]
    while True:  # a stem can equal another file's whole name ("a.b" of a.b.png, and a file "a.b")
        names = [(p.parent.relative_to(root) / (p.name if f else p.stem)).as_posix() for p, f in zip(resolved, full)]
        taken = Counter(names)
        clash = [i for i, n in enumerate(names) if taken[n] > 1 and not full[i]]
        if not clash:
            return names
        for i in clash:
            full[i] = True
