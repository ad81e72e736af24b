"""Ablation grid files: omegaconf YAML -> a validated, typed list of runs.

A grid file::

    name: main                       # optional (default: the file stem)
    description: "..."               # optional
    benchmarks: [gqa, pope]          # optional default for --benchmarks
    reference: true                  # add the full-token run (method none); default true
    paper: table1                    # optional: the report's published column (paper.py)
    fixed:                           # settings shared by every run
      eval: {batch_size: 8}
      reduction: {attn_backend: sdpa}
    axes:                            # cartesian product, in file order
      reduction.method: [divprune, vispruner, holov]
      n_vis: [64, 128, 192]          # a bare name is looked up in reduction, then eval
      restore: [false, true]
    zip:                             # optional: each group is ONE axis whose lists advance together
      - {position_mode: [reindex, retain], size_term: [false, true]}
    include:                         # optional: extra runs (fixed + these keys), not crossed
      - {method: tome, n_vis: 64}
    exclude:                         # optional: drop every run matching all keys of an entry
      - {method: holov, n_vis: 192}  # (a list value matches any of its values)

Every key is checked against the schema (``settings.RunSettings``) before anything runs; an
unknown key or a mistyped value raises ``GridError`` naming the grid file, the line and the key.
"""
from __future__ import annotations

import difflib
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llava_restore.reduction import ANCHOR_RULES
from llava_restore.reduction.registry import known_methods
from llava_restore.reduction.config import ReductionConfig

from .paper import load_paper
from .settings import SECTIONS, EvalSettings, RunSettings, section_fields

TOP_KEYS = ("name", "description", "benchmarks", "reference", "paper", "fixed", "axes", "zip", "include", "exclude")


class GridError(ValueError):
    """A grid file that cannot be expanded; the message names the file, line and key."""


@dataclass
class GridRun:
    settings: RunSettings  # reduction resolved (every preset-dependent field filled)
    point: dict[str, Any]  # canonical key -> value set by the axes / include entry
    reference: bool = False  # the full-token reference run

    def key(self) -> str:
        """Canonical identity of the run's settings (used to drop duplicates)."""
        return json.dumps(asdict(self.settings), sort_keys=True, default=str)


@dataclass
class Grid:
    path: Path
    name: str
    description: str
    benchmarks: list[str]
    axis_keys: list[str]  # canonical keys that vary across the runs, in file order
    runs: list[GridRun] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # notes about runs dropped as duplicates
    paper: Any = None  # paper.PaperTable for the report's "paper avg rel%" column, or None


# ---------------------------------------------------------------------------------- line numbers
def _line_map(node, prefix=(), out=None) -> dict[tuple, int]:
    """(path tuple) -> 1-based line of that key / item, from a yaml node tree."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = prefix + (k.value,)
            out[path] = k.start_mark.line + 1
            _line_map(v, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[prefix + (i,)] = v.start_mark.line + 1
            _line_map(v, prefix + (i,), out)
    return out


class _Source:
    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = _line_map(yaml.compose(text)) if text.strip() else {}

    def where(self, *path) -> str:
        for cut in range(len(path), 0, -1):  # nearest located ancestor
            if path[:cut] in self.lines:
                return f"{self.path}:{self.lines[path[:cut]]}"
        return str(self.path)

    def fail(self, path: tuple, msg: str) -> GridError:
        return GridError(f"{self.where(*path)}: {msg}")


# ------------------------------------------------------------------------------------ keys
def canonical_key(key: str, src: _Source, path: tuple) -> str:
    """'reduction.n_vis' / 'eval.batch_size' / a bare field name -> 'section.field'."""
    known = section_fields()
    if not isinstance(key, str):
        raise src.fail(path, f"key {key!r} must be a string")
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise src.fail(path, f"unknown key {key!r}: the section must be one of {list(SECTIONS)}")
        if name not in known[section]:
            raise src.fail(path, f"unknown key {key!r}{_suggest(name, known[section])}; "
                                 f"known {section} fields: {', '.join(known[section])}")
        return key
    hits = [s for s in SECTIONS if key in known[s]]
    if len(hits) > 1:
        raise src.fail(path, f"key {key!r} is ambiguous: write one of {[f'{s}.{key}' for s in hits]}")
    if not hits:
        every = known["reduction"] + known["eval"]
        raise src.fail(path, f"unknown key {key!r}{_suggest(key, every)}; known reduction fields: "
                             f"{', '.join(known['reduction'])}; known eval fields: {', '.join(known['eval'])}")
    return f"{hits[0]}.{key}"


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _nest(flat: dict[str, Any]) -> dict[str, dict]:
    out: dict[str, dict] = {s: {} for s in SECTIONS}
    for k, v in flat.items():
        section, name = k.split(".", 1)
        out[section][name] = v
    return out


def check_value(key: str, value: Any, src: _Source, path: tuple) -> Any:
    """Type-check one value against the schema (and the reduction's enums/registries)."""
    section, name = key.split(".", 1)
    schema = OmegaConf.structured(RunSettings)
    try:
        merged = OmegaConf.merge(schema, {section: {name: value}})
        typed = OmegaConf.to_container(merged[section], resolve=True)[name]
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        raise src.fail(path, f"bad value {value!r} for {key}: {msg}") from None
    if section == "reduction":
        cfg = OmegaConf.to_object(merged.reduction)
        try:
            cfg.validate()
        except ValueError as exc:
            raise src.fail(path, f"bad value {value!r} for {key}: {exc}") from None
        if name == "method" and typed not in ["none"] + known_methods():
            raise src.fail(path, f"unknown reduction method {typed!r} for {key}; known: {['none'] + known_methods()}")
        if name == "anchor_rule" and typed not in ANCHOR_RULES:
            raise src.fail(path, f"unknown anchor rule {typed!r} for {key}; known: {sorted(ANCHOR_RULES)}")
    return typed


# ---------------------------------------------------------------------------------- loading
def _flatten_fixed(fixed, src: _Source) -> dict[str, Any]:
    if fixed is None:
        return {}
    if not isinstance(fixed, dict):
        raise src.fail(("fixed",), "'fixed' must be a mapping")
    flat: dict[str, Any] = {}
    for k, v in fixed.items():
        if k in SECTIONS and isinstance(v, dict):
            for sub, val in v.items():
                ck = canonical_key(f"{k}.{sub}", src, ("fixed", k, sub))
                flat[ck] = check_value(ck, val, src, ("fixed", k, sub))
        else:
            ck = canonical_key(k, src, ("fixed", k))
            flat[ck] = check_value(ck, v, src, ("fixed", k))
    return flat


def _axis_values(key: str, values, src: _Source, path: tuple) -> list:
    if not isinstance(values, list) or not values:
        raise src.fail(path, f"axis {key!r} must be a non-empty list of values")
    typed = [check_value(key, v, src, path + (i,)) for i, v in enumerate(values)]
    seen = set()
    for i, t in enumerate(typed):
        tag = json.dumps(t, sort_keys=True, default=str)
        if tag in seen:
            raise src.fail(path + (i,), f"axis {key!r} lists the value {t!r} twice")
        seen.add(tag)
    return typed


def _mapping(value, src: _Source, path: tuple, what: str) -> dict:
    if not isinstance(value, dict):
        raise src.fail(path, f"{what} must be a mapping of key -> value")
    return value


def load_grid(path: str | Path, overrides: list[str] | None = None) -> Grid:
    """Read, validate and expand a grid file.  ``overrides`` are ``key=value`` strings applied on
    top of ``fixed`` (e.g. ``eval.model_path=...`` from the command line)."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    text = path.read_text(encoding="utf-8")
    src = _Source(path, text)
    try:
        raw = OmegaConf.to_container(OmegaConf.create(text), resolve=True) if text.strip() else {}
    except OmegaConfBaseException as exc:
        raise GridError(f"{path}: cannot parse: {exc}") from None
    if not isinstance(raw, dict):
        raise GridError(f"{path}: a grid file must be a mapping with keys {list(TOP_KEYS)}")
    for k in raw:
        if k not in TOP_KEYS:
            raise src.fail((k,), f"unknown top-level key {k!r}{_suggest(str(k), list(TOP_KEYS))}; known: {list(TOP_KEYS)}")

    fixed = _flatten_fixed(raw.get("fixed"), src)
    cli = _Source(Path("<command line>"), "")
    for item in overrides or []:
        if "=" not in item:
            raise GridError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        ck = canonical_key(k, cli, ())
        fixed[ck] = check_value(ck, yaml.safe_load(v) if v else None, cli, ())

    axes: list[tuple[list[str], list[tuple]]] = []  # (keys, rows of values)
    for k, values in _mapping(raw.get("axes") or {}, src, ("axes",), "'axes'").items():
        ck = canonical_key(k, src, ("axes", k))
        axes.append(([ck], [(v,) for v in _axis_values(ck, values, src, ("axes", k))]))
    zips = raw.get("zip") or []
    if not isinstance(zips, list):
        raise src.fail(("zip",), "'zip' must be a list of mappings key -> list")
    for gi, group in enumerate(zips):
        group = _mapping(group, src, ("zip", gi), f"zip group {gi}")
        keys, cols = [], []
        for k, values in group.items():
            ck = canonical_key(k, src, ("zip", gi, k))
            keys.append(ck)
            cols.append(_axis_values(ck, values, src, ("zip", gi, k)))
        lengths = {len(c) for c in cols}
        if len(lengths) > 1:
            raise src.fail(("zip", gi), f"zip group {gi} has lists of different lengths {[len(c) for c in cols]}")
        axes.append((keys, list(zip(*cols))))
    all_axis_keys = [k for keys, _ in axes for k in keys]
    dup = {k for k in all_axis_keys if all_axis_keys.count(k) > 1}
    if dup:
        raise src.fail(("axes",), f"key(s) {sorted(dup)} appear in more than one axis")

    def read_entries(name: str, as_matcher: bool) -> list[dict[str, Any]]:
        entries = raw.get(name) or []
        if not isinstance(entries, list):
            raise src.fail((name,), f"'{name}' must be a list of mappings")
        out = []
        for i, entry in enumerate(entries):
            entry = _mapping(entry, src, (name, i), f"{name} entry {i}")
            typed = {}
            for k, v in entry.items():
                ck = canonical_key(k, src, (name, i, k))
                if as_matcher and isinstance(v, list):
                    typed[ck] = [check_value(ck, x, src, (name, i, k, j)) for j, x in enumerate(v)]
                else:
                    typed[ck] = check_value(ck, v, src, (name, i, k))
                    if as_matcher:
                        typed[ck] = [typed[ck]]
            out.append(typed)
        return out

    includes = read_entries("include", as_matcher=False)
    excludes = read_entries("exclude", as_matcher=True)

    points: list[dict[str, Any]] = []
    for combo in itertools.product(*[rows for _, rows in axes]):
        point = {}
        for (keys, _), row in zip(axes, combo):
            point.update(dict(zip(keys, row)))
        points.append(point)
    if not axes:
        points = [{}]
    points = points + includes

    benchmarks = raw.get("benchmarks") or []
    if isinstance(benchmarks, str):
        benchmarks = [b for b in benchmarks.split(",") if b]
    grid = Grid(path=path, name=str(raw.get("name") or path.stem), description=str(raw.get("description") or ""),
                benchmarks=list(benchmarks), axis_keys=list(dict.fromkeys(all_axis_keys + [k for e in includes for k in e])))
    if raw.get("paper") is not None:
        try:
            grid.paper = load_paper(str(raw["paper"]))
        except ValueError as exc:
            raise src.fail(("paper",), str(exc)) from None
    seen: dict[str, int] = {}
    reference = raw.get("reference", True)
    if not isinstance(reference, bool):
        raise src.fail(("reference",), f"'reference' must be true or false, got {reference!r}")
    candidates = [(p, False) for p in points]
    if reference:
        ref = {"reduction.attn_backend": fixed["reduction.attn_backend"]} if "reduction.attn_backend" in fixed else {}
        candidates.insert(0, (ref, True))
    for i, (point, is_ref) in enumerate(candidates):
        base = {k: v for k, v in fixed.items() if k.startswith("eval.")} if is_ref else fixed
        run = _make_run({**base, **point}, point, is_ref, src)
        if not is_ref and any(_matches(run.settings, ex) for ex in excludes):
            continue
        key = run.key()
        if key in seen:
            grid.duplicates.append(f"{_label(point, is_ref)} has the same resolved settings as run "
                                   f"{seen[key]} ({_label(grid.runs[seen[key]].point, grid.runs[seen[key]].reference)}); dropped")
            continue
        seen[key] = len(grid.runs)
        grid.runs.append(run)
    return grid


def _matches(settings: RunSettings, matcher: dict[str, list]) -> bool:
    """True when every key's resolved value is one of the matcher's values."""
    for key, values in matcher.items():
        section, name = key.split(".", 1)
        if getattr(getattr(settings, section), name) not in values:
            return False
    return True


def _label(point: dict, reference: bool) -> str:
    if reference:
        return "reference (full tokens)"
    return ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in point.items()) or "(fixed settings)"


def _make_run(flat: dict[str, Any], point: dict, reference: bool, src: _Source) -> GridRun:
    nested = _nest(flat)
    merged = OmegaConf.merge(OmegaConf.structured(RunSettings), nested)
    settings: RunSettings = OmegaConf.to_object(merged)
    try:
        settings.reduction = settings.reduction.resolve()
    except ValueError as exc:
        raise src.fail((), f"run {_label(point, reference)}: {exc}") from None
    red = settings.reduction
    if red.method == "none" and red.n_vis is not None:
        raise src.fail((), f"run {_label(point, reference)}: method none keeps all tokens, but n_vis={red.n_vis}")
    if red.method != "none" and red.n_vis is None:
        raise src.fail((), f"run {_label(point, reference)}: method {red.method!r} needs n_vis")
    return GridRun(settings=settings, point=dict(point), reference=reference)


def describe(run: GridRun) -> str:
    return _label(run.point, run.reference)


__all__ = ["Grid", "GridError", "GridRun", "load_grid", "canonical_key", "describe", "EvalSettings", "ReductionConfig"]
