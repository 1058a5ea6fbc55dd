"""What a run folder records: ``run.json`` (the configuration results were made with), the resume
key of each result, what is complete, each picture's name in the folder, the inputs that could not
be read.

- A result is complete for ``(resolved path, method label)`` when a ``results*.jsonl`` line names
  it with the file's current size and modification time: an edited picture is explained again
  (the later line wins for every reader).
- Results of a method that ignores the target (``"target": null``) do not conflict with another
  ``--target`` and are not redone.
- ``run.json`` counts only methods with at least one result: a method whose every image failed,
  or a run killed before its first result, leaves nothing that refuses a corrected rerun.
- Names are unique in the folder across runs: a picture keeps the name its results have; a new
  picture whose name another file holds gets ``NAME~<path hash>``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from jaxplain import baselines, registry
from jaxplain.errors import InputError
from jaxplain.marks import output_of, uses_target
from jaxplain.runs import outputs

RESULTS = "results.jsonl"
RUN = "run.json"
FAILED = "failed.jsonl"  # a line per input that could not be read (failed.pN.jsonl per process), for the report
THUMBS = "thumbs"
PICTURES = "pictures"  # thumbs/pictures/: the original pictures' thumbnails
STORE = "attributions"


class Job(NamedTuple):
    """One method of a run: its folder ``label``, registered ``name``, function, resolved
    settings, the settings as given (``spec``, JSON), its output kind and whether it takes a key."""

    label: str
    name: str
    fn: Callable
    settings: dict[str, Any]
    spec: dict[str, Any]
    drawn_as: str
    random: bool


def jobs(specs: Sequence[str], seed: int, recorded: Sequence[dict[str, Any]] = ()) -> list[Job]:
    """``--method`` arguments as jobs, checked without a model: names, settings, drawable output.
    A method ``recorded`` (``run.json``'s methods) with the same settings keeps its label, so the
    order of the flags does not matter; another repeated name gets the folder ``name-2``, ..."""
    made: list[tuple[Callable, str, dict, dict, str, bool]] = []
    for spec in specs:
        fn, given = registry.parse(spec)
        settings = registry.resolve(fn, dict(given))
        drawn_as = output_of(fn, settings)
        if drawn_as == "layer":
            raise InputError(f"--method {fn.__name__} returns a layer's activations, which cannot be drawn over the "
                             "image: use it from Python (jaxplain.explain)")
        if drawn_as == "concepts":
            raise InputError(f"--method {fn.__name__} returns a map per concept [K, H, W, C], not one picture: use "
                             "jaxplain concepts, or jaxplain.explain from Python")
        given = {k: _json(v) for k, v in given.items()}
        random = "key" in registry.settings_of(fn)
        if random:
            given["key"] = settings.pop("key", seed)
        if any(m[1] == fn.__name__ and m[3] == given for m in made):
            raise InputError(f"--method {spec} is given twice")
        made.append((fn, fn.__name__, settings, given, drawn_as, random))
    kept = {(m.get("name"), json.dumps(m.get("settings"), sort_keys=True)): m["label"] for m in recorded}
    labels = [kept.get((name, json.dumps(given, sort_keys=True))) for _, name, _, given, _, _ in made]
    for i, (_, name, *_rest) in enumerate(made):
        n = 1
        while labels[i] is None:
            label = name if n == 1 else f"{name}-{n}"
            labels[i] = label if label not in labels else None
            n += 1
    return [Job(label, name, fn, settings, given, drawn_as, random)
            for label, (fn, name, settings, given, drawn_as, random) in zip(labels, made)]


def _json(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return repr(value)


def key_of(job: Job) -> Any:
    """A random job's key: ``--seed`` folded with the method and its settings as given, defaults
    left out as in the API (``baselines.named``; ``run.json`` records the same)."""
    return baselines.named(job.spec["key"], job.fn, job.settings)


def configuration(model: dict[str, Any], jobs_: Sequence[Job], *, target: Any, dtype: str, reduce: str,
                  colormaps: dict[str, str]) -> dict[str, Any]:
    """What ``run.json`` records: everything a result depends on."""
    return {"version": 1, "model": model, "target": target, "dtype": dtype, "reduce": reduce, "colormaps": colormaps,
            "methods": [{"label": j.label, "name": j.name, "settings": j.spec} for j in jobs_]}


def read(out: Path) -> dict[str, Any] | None:
    """``out/run.json``, or ``None`` when there is none."""
    path = out / RUN
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a jaxplain run record ({e}); use another --out or --overwrite") from None


GLOBAL = ("model", "target", "dtype", "reduce", "colormaps")


def _conflicts(old: dict[str, Any], new: dict[str, Any], made: set[str]) -> tuple[list[str], set[str]]:
    """What differs between the record and this run for methods with results (``made``): the
    sentences and the labels whose results it concerns."""
    said, labels = [], set()
    recorded = {m.get("label"): m for m in old.get("methods", [])}
    for k in GLOBAL:
        concerned = {label for label in made if k != "target" or _aimed(recorded.get(label))}
        if concerned and old.get(k) != new.get(k):
            said.append(f"{k} {old.get(k)!r} (this run: {new.get(k)!r})")
            labels |= concerned
    before = {m["label"]: m for m in old.get("methods", [])}
    for m in new["methods"]:
        was = before.get(m["label"])
        if was is not None and m["label"] in made and was != m:
            said.append(f"{m['label']} with settings {was['settings']} (this run: {m['settings']})")
            labels.add(m["label"])
    return said, labels


def _aimed(method: dict[str, Any] | None) -> bool:
    """Whether a recorded method's results depend on the target (unknown: they do)."""
    try:
        fn = registry.METHODS[method["name"]]  # type: ignore[index]
        given = {k: v for k, v in method.get("settings", {}).items() if k != "key"}  # type: ignore[union-attr]
        return uses_target(fn, registry.resolve(fn, given))
    except Exception:  # noqa: BLE001  (a record of another version: assume the target matters)
        return True


def prepare(out: Path, config: dict[str, Any], *, overwrite: bool, writer: bool) -> dict[str, Any]:
    """Check this run against the results already in ``out``; with ``overwrite``, remove those of
    the methods that conflict (all, for another model, target, dtype, reduction or colour map),
    nothing else. Returns the run's record (other methods kept) and, when ``writer`` (process 0),
    writes it."""
    try:
        old = read(out)
    except InputError:
        if not overwrite:
            raise
        old = None
        if writer:  # an unreadable record: nothing in the folder can be trusted
            remove(out, {label for _, label in completed(out).results})
    if old is None:
        if writer:
            outputs.write_atomic(out / RUN, json.dumps(config, indent=1).encode())
        return config
    made = {label for _, label in completed(out).results}
    said, conflicting = _conflicts(old, config, made)
    if said and not overwrite:
        raise InputError(f"{out} holds results made with other settings: {'; '.join(said)}. Use another --out, "
                         "or --overwrite to replace them")
    if conflicting and writer:
        remove(out, conflicting)
    known = {m["label"] for m in config["methods"]}
    keep = [m for m in old.get("methods", []) if m["label"] not in known and m["label"] not in conflicting
            and m["label"] in made]
    config = {**config, "methods": [*config["methods"], *keep]}
    if writer:
        outputs.write_atomic(out / RUN, json.dumps(config, indent=1).encode())
    return config


def remove(out: Path, labels: Iterable[str]) -> None:
    """The results of the methods ``labels``: their folders, thumbnails and lines."""
    labels = set(labels)
    for label in labels:
        shutil.rmtree(out / label, ignore_errors=True)
        shutil.rmtree(out / THUMBS / label, ignore_errors=True)
    for f in sorted(out.glob("results*.jsonl")):
        lines = outputs.read_lines(f)
        kept = [r for r in lines if r.get("method") not in labels]
        if len(kept) != len(lines):
            outputs.write_atomic(f, "".join(json.dumps(r) + "\n" for r in kept).encode("ascii"))


def settle(out: Path) -> None:
    """Rewrite ``run.json`` with only the methods that have results."""
    old = read(out)
    if old is None:
        return
    made = {label for _, label in completed(out).results}
    methods = [m for m in old.get("methods", []) if m["label"] in made]
    if methods != old.get("methods", []):
        outputs.write_atomic(out / RUN, json.dumps({**old, "methods": methods}, indent=1).encode())


def fingerprint(path: str | os.PathLike) -> tuple[int, int] | None:
    """The resume key of a file's content: ``(size, mtime_ns)``, or ``None`` when it cannot be read."""
    try:
        s = os.stat(path)
    except OSError:
        return None
    return s.st_size, s.st_mtime_ns


class Done(NamedTuple):
    """What the results files say: per ``(resolved path, label)`` the fingerprint of the latest
    result (``None`` for a line written before fingerprints), each path's name in the folder, and
    per store the next free row."""

    results: dict[tuple[str, str], tuple[int, int] | None]
    names: dict[str, str]
    rows: dict[str, int]


def next_rows(records: Iterable[dict[str, Any]], rows: dict[str, int] | None = None) -> dict[str, int]:
    """Per store, the first row no line of ``records`` uses (the one rule for ``completed`` and ``join``)."""
    rows = dict(rows or {})
    for r in records:
        try:
            rows[r["store"]] = max(rows.get(r["store"], 0), int(r["row"]) + 1)
        except (KeyError, TypeError, ValueError):
            continue
    return rows


def name_of(record: dict[str, Any]) -> str | None:
    """A result line's picture name in the folder (``thumbs/pictures/NAME.jpg``)."""
    picture = record.get("picture")
    head = f"{THUMBS}/{PICTURES}/"
    if not isinstance(picture, str) or not picture.startswith(head) or not picture.endswith(".jpg"):
        return None
    return picture[len(head) : -len(".jpg")]


def completed(out: Path) -> Done:
    """Every results file in ``out`` read once: see ``Done``."""
    results, names, records = {}, {}, []
    for f in sorted(out.glob("results*.jsonl")):
        for r in outputs.read_lines(f):
            if not isinstance(r.get("path"), str) or not isinstance(r.get("method"), str):
                continue
            records.append(r)
            b, m = r.get("bytes"), r.get("modified")
            results[(r["path"], r["method"])] = (b, m) if b is not None and m is not None else None
            name = name_of(r)
            if name is not None:
                names.setdefault(r["path"], name)
    return Done(results, names, next_rows(records))


def unique_names(done: Done, files: Sequence[Path], proposed: Sequence[str]) -> list[str]:
    """Each file's name in the folder: the one its earlier results have, else ``proposed`` (its
    name relative to this run's inputs) unless another file holds it, then ``NAME~<path hash>``."""
    paths = [os.path.realpath(f) for f in files]
    taken = {name: path for path, name in done.names.items()}
    names: list[str | None] = [done.names.get(p) for p in paths]
    for name, p in zip(names, paths):
        if name is not None:
            taken.setdefault(name, p)
    for i, (p, want) in enumerate(zip(paths, proposed)):
        if names[i] is not None:
            continue
        name, n = want, 1
        while taken.get(name, p) != p:
            name = f"{want}~{baselines.path_id(p):08x}" + (f"-{n}" if n > 1 else "")
            n += 1
        taken[name] = p
        names[i] = name
    return names  # type: ignore[return-value]


def is_complete(done: Done, path: str, label: str, content: tuple[int, int] | None) -> bool | None:
    """``True`` when a result of ``label`` for ``path`` with this ``content`` exists, ``None`` when one
    exists for other content (the file changed since), ``False`` when none exists."""
    if (path, label) not in done.results:
        return False
    was = done.results[(path, label)]
    return True if was is None or content is None or tuple(was) == tuple(content) else None


def results_files(process: int, count: int) -> tuple[str, str]:
    """This process's results file and store name."""
    return (RESULTS, STORE) if count == 1 else (f"results.p{process}.jsonl", f"{STORE}.p{process}")


def failed_file(process: int, count: int) -> str:
    """This process's file of unreadable inputs (one line per input: a rerun replaces it)."""
    return FAILED if count == 1 else f"failed.p{process}.jsonl"


def _unnamed(reason: str, given: Any) -> str:
    """``reason`` without the input's name as given (``"rp/bad.jpg: not a readable image (... 'rp/bad.jpg')"``):
    the report names each input once, by its resolved path."""
    if not isinstance(given, str) or not given:
        return reason
    return reason.removeprefix(f"{given}: ").replace(f" {given!r}", "")


def failed(out: Path) -> dict[str, str]:
    """The inputs the runs in ``out`` could not read, by resolved path, with the reason (without the
    name it was given by), less those with results since."""
    have = {path for path, _ in completed(out).results}
    said = {}
    for f in sorted(out.glob("failed*.jsonl")):
        for r in outputs.read_lines(f):
            if isinstance(r.get("path"), str):
                said[r["path"]] = _unnamed(str(r.get("reason", "")), r.get("input"))
    return {p: why for p, why in said.items() if p not in have}
