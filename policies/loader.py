"""Strict policy loader: YAML nodes → checked :class:`~.model.Policy`, every error at once.

The file is composed into YAML nodes with the safe loader (so each value keeps its line), then
walked once. Every problem becomes one line ``file:line: key.path: message``; a file with any
problem raises :class:`~.model.PolicyError` carrying all of them.

What is refused (besides plain type errors): unknown keys anywhere, duplicate YAML keys, a wrong
``apiVersion``/``kind``, unknown detector types, detector params outside the detector's
``params_schema`` (unknown keys, values out of range), duplicate detector/rule names, names
in ``when`` that are not detectors of the policy, undefined receivers, bad durations (``30s``,
``5m``, ``1h``, ``2d``, ``1h30m`` or a number of seconds), malformed ``${VAR}`` references, and
**credentials written literally** in a receiver ``url`` (``https://user:secret@host``) or in an
``Authorization`` header: these are errors, not warnings — put them in the environment and
write ``${VAR}``.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from .expr import KEYWORDS, ExprError, parse
from .model import (
    DetectorSpec,
    Policy,
    PolicyError,
    PolicySet,
    ReceiverSpec,
    RetrainLimit,
    RetrainSchedule,
    RuleSpec,
    WindowSpec,
)
from .receivers.base import RECEIVER_KEYS

__all__ = [
    "API_VERSION",
    "load_policies",
    "load_policy_file",
    "parse_duration",
    "read_yaml_file",
    "validate_paths",
]

API_VERSION = "driftwarden/v1"
KIND = "Policy"
SEVERITIES = ("critical", "warning", "info")
PROMOTE = ("manual", "auto")
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(d|h|m|s))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|m|s)")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

#: Receivers that need a ``url``. The keys each type accepts come from
#: ``policies.receivers.RECEIVER_KEYS`` (one source of truth with the receivers themselves).
_URL_RECEIVERS = frozenset({"alertmanager", "webhook"})

Path_ = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"


def parse_duration(value: Any) -> float:
    """``30s``/``5m``/``1h``/``2d``/``1h30m`` or a number of seconds → seconds (``ValueError``)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        seconds = float(value)
    elif isinstance(value, str) and _DURATION_RE.match(value.strip()):
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(value))
    if seconds is not None:
        # YAML's .nan/.inf (and a string of digits too long for a float) pass the checks
        # above (NaN < 0 is false) and would only fail later, in the daemon, on an event.
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a duration (it must be a finite number of seconds)")
        return seconds
    raise ValueError(
        f"{value!r} is not a duration (use e.g. 30s, 5m, 1h, 2d, 1h30m or a number of seconds)"
    )


def _fmt_path(path: Path_) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class _Doc:
    """One file being checked: its plain data, the line of every path, and the errors."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[Path_, int] = {}
        self.key_lines: dict[Path_, int] = {}
        self.errors: list[tuple[int, str]] = []
        # id(mapping node) -> (node, how many of its pairs came from merge keys): see _flatten
        self._merged: dict[int, tuple[yaml.MappingNode, int]] = {}

    def line(self, path: Path_, at_key: bool = False) -> int:
        if at_key and path in self.key_lines:
            return self.key_lines[path]
        p = path
        while p not in self.lines and p:
            p = p[:-1]
        return self.lines.get(p, 1)

    def err(self, path: Path_, msg: str, at_key: bool = False) -> None:
        where = _fmt_path(path)
        text = f"{where}: {msg}" if where else msg
        self.errors.append((self.line(path, at_key), text))

    def formatted(self) -> list[str]:
        # Sorted by line (stable), so the report reads top to bottom like the file.
        return [f"{self.source}:{ln}: {m}" for ln, m in sorted(self.errors, key=lambda e: e[0])]

    def _flatten(self, loader: yaml.SafeLoader, node: yaml.MappingNode) -> int:
        """Resolve the YAML merge keys (``<<``) of ``node`` in place; how many of its pairs,
        at the front, came from them (the rest were written in the mapping itself).

        PyYAML's ``flatten_mapping`` rewrites the node (merged pairs first, then the explicit
        ones) and cannot tell afterwards which were which, so the count is taken before and
        kept for a node that is read again through an alias. Merged mappings are flattened
        here first, so PyYAML's own recursion never flattens a node this has not counted.
        """
        if id(node) in self._merged:
            return self._merged[id(node)][1]
        for knode, vnode in node.value:
            if knode.tag == _MERGE_TAG:
                subs = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for sub in subs:
                    if isinstance(sub, yaml.MappingNode):
                        self._flatten(loader, sub)
        explicit = sum(knode.tag != _MERGE_TAG for knode, _ in node.value)
        loader.flatten_mapping(node)
        merged = len(node.value) - explicit
        self._merged[id(node)] = (node, merged)
        return merged

    def to_python(self, loader: yaml.SafeLoader, node: yaml.Node, path: Path_) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            n_merged = self._flatten(loader, node)
            # YAML merge semantics: a key written in the mapping overrides a merged one, and
            # among merged pairs the later one wins (PyYAML orders them so); only a key
            # written twice in the mapping itself is a duplicate.
            pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
            explicit: dict[str, int] = {}
            for i, (knode, vnode) in enumerate(node.value):
                key = loader.construct_object(knode, deep=True)
                if not isinstance(key, str):
                    self.errors.append(
                        (
                            knode.start_mark.line + 1,
                            f"{_fmt_path(path) or 'file'}: key {key!r} is not a string.",
                        )
                    )
                    key = str(key)
                if i >= n_merged:
                    if key in explicit:
                        self.errors.append(
                            (
                                knode.start_mark.line + 1,
                                f"{_fmt_path((*path, key))}: duplicate key {key!r} (first at "
                                f"line {explicit[key]}).",
                            )
                        )
                        continue
                    explicit[key] = knode.start_mark.line + 1
                pairs[key] = (knode, vnode)
            out: dict[Any, Any] = {}
            for key, (knode, vnode) in pairs.items():
                self.key_lines[(*path, key)] = knode.start_mark.line + 1
                out[key] = self.to_python(loader, vnode, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.to_python(loader, v, (*path, i)) for i, v in enumerate(node.value)]
        return loader.construct_object(node, deep=True)


def _compose(text: str, doc: _Doc) -> Any:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as e:  # e.g. control characters, found before any parsing
        doc.errors.append((_line_of(e, text), f"invalid YAML: {_problem(e)}."))
        return None
    try:
        node = loader.get_single_node()
        if node is None:
            doc.errors.append((1, "the file is empty."))
            return None
        return doc.to_python(loader, node, ())
    except yaml.YAMLError as e:
        doc.errors.append((_line_of(e, text), f"invalid YAML: {_problem(e)}."))
        return None
    except RecursionError:
        doc.errors.append((1, "invalid YAML: an alias refers to itself (or nesting is too deep)."))
        return None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        # PyYAML's scalar constructors (e.g. a bad !!int or !!timestamp) fail with plain errors.
        doc.errors.append((1, f"invalid YAML: a tagged value cannot be read ({type(e).__name__})."))
        return None
    finally:
        loader.dispose()


def _line_of(e: yaml.YAMLError, text: str) -> int:
    if isinstance(e, yaml.reader.ReaderError):  # carries a character position, not a mark
        return text.count("\n", 0, max(0, e.position)) + 1
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return mark.line + 1 if mark is not None else 1


def _problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        return str(e.problem or e.context)
    if isinstance(e, yaml.reader.ReaderError):
        return f"character {e.character!r} is not allowed"
    return str(e)


# --- small typed getters -------------------------------------------------------------------


def _keys(
    doc: _Doc,
    d: Mapping[str, Any],
    path: Path_,
    allowed: Iterable[str],
    required: Iterable[str] = (),
    what: str = "",
) -> None:
    allowed = set(allowed)
    for k in d:
        if k not in allowed:
            doc.err((*path, k), f"unknown key {k!r}{what} ({_hint(k, allowed)}).", at_key=True)
    for k in required:
        if k not in d:
            doc.err(path, f"missing required key {k!r}{what}.")


def _hint(key: str, allowed: Iterable[str]) -> str:
    """``did you mean 'x'?`` for a near miss, else the allowed keys."""
    allowed = sorted(allowed)
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"


def _mapping(doc: _Doc, v: Any, path: Path_) -> dict[str, Any] | None:
    if isinstance(v, dict):
        return v
    doc.err(path, f"must be a mapping, not {_kind(v)}.")
    return None


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(v), type(v).__name__)


def _str(doc: _Doc, v: Any, path: Path_) -> str | None:
    if isinstance(v, str) and v.strip():
        return v
    doc.err(path, f"must be a non-empty string, not {_kind(v) if v != '' else 'empty'}.")
    return None


def _int(doc: _Doc, v: Any, path: Path_, minimum: int) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and v >= minimum:
        return v
    doc.err(path, f"must be an integer >= {minimum}, not {v!r}.")
    return None


def _number(
    doc: _Doc, v: Any, path: Path_, minimum: float | None = None, maximum: float | None = None
) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if (minimum is None or v >= minimum) and (maximum is None or v <= maximum):
            return float(v)
        rng = (
            f"between {minimum:g} and {maximum:g}"
            if minimum is not None and maximum is not None
            else (f">= {minimum:g}" if minimum is not None else f"<= {maximum:g}")
        )
        doc.err(path, f"{v!r} is out of range (must be {rng}).")
        return None
    doc.err(path, f"must be a number, not {_kind(v)}.")
    return None


def _duration(doc: _Doc, v: Any, path: Path_, positive: bool = False) -> float | None:
    try:
        s = parse_duration(v)
    except ValueError as e:
        doc.err(path, f"{e}.")
        return None
    if positive and s <= 0:
        doc.err(path, f"{v!r} must be a positive duration.")
        return None
    return s


def _check_env_refs(doc: _Doc, v: Any, path: Path_) -> bool:
    """``${`` must open a valid ``${NAME}``; ``$$`` is a literal ``$``. False if one does not."""
    if isinstance(v, dict):
        return all([_check_env_refs(doc, x, (*path, k)) for k, x in v.items()])
    if isinstance(v, list):
        return all([_check_env_refs(doc, x, (*path, i)) for i, x in enumerate(v)])
    if isinstance(v, str):
        i = 0
        while i < len(v):
            if v.startswith("$$", i):
                i += 2
                continue
            if v.startswith("${", i):
                m = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}").match(v, i)
                if m is None:
                    doc.err(
                        path,
                        f"malformed environment reference at column {i + 1} of {v!r} "
                        "(write ${NAME}, NAME of letters, digits and _).",
                    )
                    return False
                i = m.end()
                continue
            i += 1
    return True


def _only_env(s: str) -> bool:
    return re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", s) is not None


# --- sections ------------------------------------------------------------------------------


def _window(doc: _Doc, v: Any) -> WindowSpec:
    path: Path_ = ("window",)
    w = _mapping(doc, v, path)
    if w is None:
        return WindowSpec()
    _keys(doc, w, path, ("events", "duration", "allowed_lateness", "labeled"))
    events, duration = _window_size(doc, w, path)
    lateness = 0.0
    if "allowed_lateness" in w:
        lateness = _duration(doc, w["allowed_lateness"], (*path, "allowed_lateness")) or 0.0
        if duration is None and events is not None:
            doc.err((*path, "allowed_lateness"), "only applies to duration windows.", at_key=True)
    l_events = l_duration = None
    if "labeled" in w:
        lw = _mapping(doc, w["labeled"], (*path, "labeled"))
        if lw is not None:
            _keys(doc, lw, (*path, "labeled"), ("events", "duration"))
            l_events, l_duration = _window_size(doc, lw, (*path, "labeled"))
    return WindowSpec(events, duration, l_events, l_duration, lateness)


def _window_size(doc: _Doc, w: Mapping[str, Any], path: Path_) -> tuple[int | None, float | None]:
    if ("events" in w) == ("duration" in w):
        doc.err(path, "needs exactly one of 'events' (a count) or 'duration' (e.g. 1h).")
        return None, None
    if "events" in w:
        return _int(doc, w["events"], (*path, "events"), 1), None
    return None, _duration(doc, w["duration"], (*path, "duration"), positive=True)


def _detectors(doc: _Doc, v: Any, types: Mapping[str, Any]) -> tuple[DetectorSpec, ...]:
    path: Path_ = ("detectors",)
    if not isinstance(v, list) or not v:
        doc.err(path, "must be a non-empty list of detectors.")
        return ()
    out: list[DetectorSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(v):
        p: Path_ = (*path, i)
        d = _mapping(doc, entry, p)
        if d is None:
            continue
        name = _str(doc, d.get("name"), (*p, "name")) if "name" in d else None
        if "name" not in d:
            doc.err(p, "missing required key 'name'.")
        elif name is not None and (not NAME_RE.match(name) or name in KEYWORDS):
            doc.err(
                (*p, "name"),
                f"{name!r} is not a valid detector name (letters, digits, _ "
                "and -, starting with a letter or _; not and, or, not).",
            )
            name = None
        if name is not None:
            if name in seen:
                doc.err(
                    (*p, "name"), f"duplicate detector name {name!r} (first at line {seen[name]})."
                )
            else:
                seen[name] = doc.line((*p, "name"))
        kind = _str(doc, d.get("type"), (*p, "type")) if "type" in d else None
        if "type" not in d:
            doc.err(p, "missing required key 'type'.")
        params = {k: x for k, x in d.items() if k not in ("name", "type")}
        if kind is None:
            continue
        if kind not in types:
            known = ", ".join(sorted(types)) or "none registered"
            doc.err((*p, "type"), f"unknown detector type {kind!r} (known: {known}).")
            continue
        _detector_params(doc, p, kind, params, types[kind].params_schema)
        if name is not None:
            out.append(DetectorSpec(name, kind, params, doc.line(p)))
    return tuple(out)


def _detector_params(
    doc: _Doc, p: Path_, kind: str, params: Mapping[str, Any], schema: Mapping[str, Any]
) -> None:
    props = schema.get("properties") or {}
    bad = [k for k in params if k not in props]
    for k in bad:
        hint = _hint(k, {"name", "type", *props})
        doc.err((*p, k), f"unknown key {k!r} for detector type {kind!r} ({hint}).", at_key=True)
    # Schema checks (types, ranges, required, enums) on the known keys only: unknown keys were
    # reported above with a friendlier message than "additional properties".
    known = {k: x for k, x in params.items() if k in props}
    validator = jsonschema.Draft202012Validator(dict(schema))
    for e in sorted(validator.iter_errors(known), key=lambda e: list(map(str, e.absolute_path))):
        if e.validator == "additionalProperties":
            continue
        doc.err((*p, *e.absolute_path), f"{e.message}.")


def _rules(
    doc: _Doc, v: Any, detector_names: list[str], receivers: set[str], receivers_ok: bool
) -> tuple[RuleSpec, ...]:
    path: Path_ = ("rules",)
    if not isinstance(v, list) or not v:
        doc.err(path, "must be a non-empty list of rules.")
        return ()
    out: list[RuleSpec] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(v):
        p: Path_ = (*path, i)
        r = _mapping(doc, entry, p)
        if r is None:
            continue
        _keys(
            doc,
            r,
            p,
            ("name", "when", "severity", "for", "cooldown", "actions", "recover_after"),
            required=("name", "when", "actions"),
        )
        name = _str(doc, r["name"], (*p, "name")) if "name" in r else None
        if name is not None:
            if name in seen:
                doc.err((*p, "name"), f"duplicate rule name {name!r} (first at line {seen[name]}).")
            else:
                seen[name] = doc.line((*p, "name"))
        when = None
        text = r.get("when")
        if "when" in r and _str(doc, text, (*p, "when")) is not None:
            try:
                when = parse(str(text))
            except ExprError as e:
                doc.err((*p, "when"), f"{e}.")
            else:
                unknown = sorted(when.names() - set(detector_names))
                for u in unknown:
                    doc.err(
                        (*p, "when"),
                        f"unknown detector {u!r} (defined: {', '.join(sorted(set(detector_names)))}).",
                    )
        severity = r.get("severity", "warning")
        if severity not in SEVERITIES:
            doc.err(
                (*p, "severity"),
                f"{severity!r} is not a severity (use one of {', '.join(SEVERITIES)}).",
            )
        for_w = _int(doc, r["for"], (*p, "for"), 1) if "for" in r else 1
        cooldown = _duration(doc, r["cooldown"], (*p, "cooldown")) if "cooldown" in r else 0.0
        actions = (
            _actions(doc, r.get("actions"), (*p, "actions"), receivers, receivers_ok)
            if "actions" in r
            else ()
        )
        falls_back = any(t == "fallback" for t, _ in actions)
        recover = 3 if falls_back else 1
        rule_recover: int | None = None
        if "recover_after" in r:
            rule_recover = _int(doc, r["recover_after"], (*p, "recover_after"), 1)
            recover = rule_recover or recover
        for t, a in actions:
            if t == "fallback" and "recover_after" in a:
                fb_recover = int(a["recover_after"])
                # The rule's recover_after and its fallback's are the same setting: two
                # different values would leave one silently ignored, so refuse instead.
                if rule_recover is not None and fb_recover != rule_recover:
                    ap: Path_ = (*p, "actions", _action_index(r["actions"], "fallback"), "fallback")
                    doc.err(
                        (*ap, "recover_after"),
                        f"{fb_recover} conflicts with the rule's recover_after: {rule_recover} "
                        f"(line {doc.line((*p, 'recover_after'))}); give it once.",
                    )
                recover = fb_recover
        if name is None or when is None or for_w is None or cooldown is None:
            continue
        out.append(
            RuleSpec(name, when, str(text), str(severity), for_w, cooldown, actions, recover)
        )
    return tuple(out)


_ACTION_TYPES = ("alert", "fallback", "retrain")


def _action_index(actions: list[Any], kind: str) -> int:
    """Index in the rule's ``actions`` list of its (only) action of type ``kind``."""
    return next(i for i, e in enumerate(actions) if isinstance(e, dict) and kind in e)


def _actions(
    doc: _Doc, v: Any, path: Path_, receivers: set[str], receivers_ok: bool
) -> tuple[tuple[str, dict[str, Any]], ...]:
    if not isinstance(v, list) or not v:
        doc.err(path, "must be a non-empty list of actions (alert, fallback, retrain).")
        return ()
    out: list[tuple[str, dict[str, Any]]] = []
    alerted: set[str] = set()
    for i, entry in enumerate(v):
        p: Path_ = (*path, i)
        if not isinstance(entry, dict) or len(entry) != 1:
            doc.err(p, "each action is a mapping with one key: alert, fallback or retrain.")
            continue
        ((t, arg),) = entry.items()
        ap: Path_ = (*p, t)
        if t not in _ACTION_TYPES:
            doc.err(
                ap, f"unknown action {t!r} (use one of {', '.join(_ACTION_TYPES)}).", at_key=True
            )
            continue
        if any(t == u for u, _ in out) and t != "alert":
            doc.err(ap, f"a rule may have only one {t!r} action.", at_key=True)
            continue
        if t == "alert":
            name = _str(doc, arg, ap)
            if name is None:
                continue
            if receivers_ok and name not in receivers:
                defined = ", ".join(sorted(receivers)) or "none"
                doc.err(ap, f"undefined receiver {name!r} (defined: {defined}).")
            elif name in alerted:
                doc.err(ap, f"receiver {name!r} is alerted twice by this rule.")
            alerted.add(name)
            out.append(("alert", {"receiver": name}))
        elif t == "fallback":
            f = _mapping(doc, arg, ap)
            if f is None:
                continue
            _keys(doc, f, ap, ("to", "recover_after"), required=("to",))
            ok = "to" in f and _str(doc, f["to"], (*ap, "to")) is not None
            if (
                "recover_after" in f
                and _int(doc, f["recover_after"], (*ap, "recover_after"), 1) is None
            ):
                ok = False
            if ok:
                out.append(("fallback", dict(f)))
        else:
            r = _mapping(doc, arg, ap)
            if r is None:
                continue
            n_err = len(doc.errors)
            _keys(
                doc, r, ap, ("trainer", "gates", "promote", "data", "params"), required=("trainer",)
            )
            if "trainer" in r:
                _str(doc, r["trainer"], (*ap, "trainer"))
            if "data" in r:
                _retrain_data(doc, r["data"], (*ap, "data"))
            if "params" in r:
                _mapping(doc, r["params"], (*ap, "params"))
            if r.get("promote", "manual") not in PROMOTE:
                doc.err(
                    (*ap, "promote"),
                    f"{r['promote']!r} is not a promotion mode (use manual or auto).",
                )
            if "gates" in r:
                _gates(doc, r["gates"], (*ap, "gates"))
            if len(doc.errors) == n_err:
                out.append(("retrain", {"promote": "manual", **r}))
    return tuple(out)


def _retrain_data(doc: _Doc, v: Any, path: Path_) -> None:
    """``data: {reference: <table path> | champion, recent: N}`` of a retrain action."""
    d = _mapping(doc, v, path)
    if d is None:
        return
    _keys(doc, d, path, ("reference", "recent"))
    if "reference" in d:
        _str(doc, d["reference"], (*path, "reference"))
    if "recent" in d:
        _int(doc, d["recent"], (*path, "recent"), 1)


def _gates(doc: _Doc, v: Any, path: Path_) -> None:
    # The gate keys and metric names are the retrain pipeline's own (retrain/gates.py runs
    # validate_gates before every attempt): a policy that validates must not fail there. The
    # import is here, not at the top, so only policies with gates pay for it.
    from driftwarden.retrain.gates import GATE_KEYS, METRICS, SLICE_GATE_KEYS

    g = _mapping(doc, v, path)
    if g is None:
        return
    _keys(doc, g, path, GATE_KEYS)
    for k in ("min", "max_regression"):
        if k in g:
            _metric_map(
                doc, g[k], (*path, k), METRICS, minimum=0.0 if k == "max_regression" else None
            )
    if "min_holdout" in g:
        _int(doc, g["min_holdout"], (*path, "min_holdout"), 1)
    if "slices" in g:
        sl = _mapping(doc, g["slices"], (*path, "slices"))
        for seg, spec in (sl or {}).items():
            sp: Path_ = (*path, "slices", seg)
            s = _mapping(doc, spec, sp)
            if s is None:
                continue
            _keys(doc, s, sp, SLICE_GATE_KEYS)
            if "max_drop" in s:
                _metric_map(doc, s["max_drop"], (*sp, "max_drop"), METRICS, minimum=0.0)
            if "min_samples" in s:
                _int(doc, s["min_samples"], (*sp, "min_samples"), 1)


def _metric_map(
    doc: _Doc, v: Any, path: Path_, metrics: Sequence[str], minimum: float | None
) -> None:
    m = _mapping(doc, v, path)
    for metric, x in (m or {}).items():
        if metric not in metrics:
            doc.err(
                (*path, metric),
                f"unknown metric {metric!r} ({_hint(metric, metrics)}).",
                at_key=True,
            )
            continue
        _number(doc, x, (*path, metric), minimum=minimum)


def _receivers(doc: _Doc, v: Any) -> dict[str, ReceiverSpec]:
    path: Path_ = ("receivers",)
    recs = _mapping(doc, v, path)
    out: dict[str, ReceiverSpec] = {}
    for name, spec in (recs or {}).items():
        p: Path_ = (*path, name)
        s = _mapping(doc, spec, p)
        if s is None:
            continue
        kind = s.get("type")
        if not isinstance(kind, str) or kind not in RECEIVER_KEYS:
            doc.err(
                (*p, "type") if "type" in s else p,
                f"unknown receiver type {kind!r} (use one of {', '.join(sorted(RECEIVER_KEYS))}).",
            )
            continue
        n_err = len(doc.errors)
        _keys(
            doc,
            s,
            p,
            RECEIVER_KEYS[kind],
            required=["url"] if kind in _URL_RECEIVERS else [],
            what=f" for receiver type {kind!r}",
        )
        env_ok = _check_env_refs(doc, s, p)
        if "url" in s and _str(doc, s["url"], (*p, "url")) is not None and env_ok:
            _check_url(doc, s["url"], (*p, "url"))
        if "timeout_s" in s:
            _number(doc, s["timeout_s"], (*p, "timeout_s"), minimum=0.001, maximum=300.0)
        if "topic" in s:
            _str(doc, s["topic"], (*p, "topic"))
        for hk in ("headers",):
            if hk in s:
                h = _mapping(doc, s[hk], (*p, hk))
                for k, x in (h or {}).items():
                    if not isinstance(x, str):
                        doc.err((*p, hk, k), f"must be a string, not {_kind(x)}.")
                    elif hk == "headers" and k.lower() == "authorization" and "${" not in x:
                        doc.err(
                            (*p, hk, k),
                            "a credential is written literally; put it in the "
                            "environment and write ${VAR}.",
                        )
        if len(doc.errors) == n_err:
            out[name] = ReceiverSpec(name, kind, {k: x for k, x in s.items() if k != "type"})
    return out


def _check_url(doc: _Doc, url: str, path: Path_) -> None:
    if _only_env(url):
        return
    probe = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "x", url)
    try:
        parts = urlsplit(probe)
    except ValueError as e:
        doc.err(path, f"{url!r} is not a URL ({e}).")
        return
    if parts.scheme not in ("http", "https") or not parts.netloc:
        doc.err(path, f"{url!r} is not an http(s) URL.")
        return
    netloc = urlsplit(url).netloc if "${" not in url else url.split("://", 1)[-1].split("/")[0]
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        if ":" in userinfo and not _only_env(userinfo.split(":", 1)[1]):
            doc.err(
                path,
                "a password is written literally in the URL; put it in the "
                "environment and write ${VAR}.",
            )


def _reference(doc: _Doc, v: Any, source: Path) -> str:
    path: Path_ = ("reference",)
    s = _str(doc, v, path)
    if s is None:
        return ""
    if s.startswith("models:/"):
        body = s[len("models:/") :]
        if not re.fullmatch(r"[^/@\s]+(@[A-Za-z0-9_-]+|/\d+)", body):
            doc.err(
                path,
                f"{s!r} is not a model reference (use models:/NAME@ALIAS or "
                "models:/NAME/VERSION; NAME may be {model}).",
            )
        return s
    if s.startswith("file:"):
        rel = s[len("file:") :]
        if not rel:
            doc.err(path, "'file:' needs a path.")
            return ""
        # Relative to the policy file, so a policy directory can be moved as a whole.
        return "file:" + str((source.parent / rel).resolve())
    doc.err(path, f"{s!r} is not a reference (use models:/NAME@ALIAS or file:PATH).")
    return ""


def _retrain_limit(doc: _Doc, v: Any) -> RetrainLimit:
    path: Path_ = ("retrain_limit",)
    m = _mapping(doc, v, path)
    if m is None:
        return RetrainLimit()
    _keys(doc, m, path, ("max", "per"))
    mx = _int(doc, m["max"], (*path, "max"), 0) if "max" in m else 1
    per = _duration(doc, m["per"], (*path, "per"), positive=True) if "per" in m else 86400.0
    return RetrainLimit(mx if mx is not None else 1, per if per is not None else 86400.0)


_TOP = (
    "apiVersion",
    "kind",
    "model",
    "description",
    "reference",
    "window",
    "detectors",
    "rules",
    "receivers",
    "retrain_limit",
    "schedule",
)


def _schedule(doc: _Doc, v: Any, rules: Sequence[RuleSpec]) -> RetrainSchedule | None:
    """``schedule: {retrain: "<crontab>", rule: NAME}``: retrain on a clock, UTC."""
    path: Path_ = ("schedule",)
    m = _mapping(doc, v, path)
    if m is None:
        return None
    _keys(doc, m, path, ("retrain", "rule"), required=("retrain",))
    cron = _str(doc, m.get("retrain"), (*path, "retrain")) if "retrain" in m else None
    if cron is not None:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(cron, timezone="UTC")
        except ValueError as e:
            doc.err((*path, "retrain"), f"{cron!r} is not a crontab expression ({e}).")
            cron = None
    rule = _str(doc, m["rule"], (*path, "rule")) if "rule" in m else None
    retraining = [r.name for r in rules if any(t == "retrain" for t, _ in r.actions)]
    if rule is not None and rule not in retraining:
        doc.err(
            (*path, "rule"),
            f"rule {rule!r} has no retrain action (these do: {', '.join(retraining) or 'none'}).",
        )
    elif rule is None and rules and not retraining:
        doc.err(path, "no rule of this policy has a retrain action to schedule.")
    if cron is None or doc.errors:
        return None
    return RetrainSchedule(cron, rule)


def _check_policy(doc: _Doc, data: Any, source: Path, types: Mapping[str, Any]) -> Policy | None:
    if not isinstance(data, dict):
        doc.err((), f"a policy file must be a mapping at the top level, not {_kind(data)}.")
        return None
    _keys(
        doc,
        data,
        (),
        _TOP,
        required=("apiVersion", "kind", "model", "reference", "window", "detectors", "rules"),
    )
    if "apiVersion" in data and data["apiVersion"] != API_VERSION:
        doc.err(("apiVersion",), f"{data['apiVersion']!r} is not supported (use {API_VERSION}).")
    if "kind" in data and data["kind"] != KIND:
        doc.err(("kind",), f"{data['kind']!r} is not supported (use {KIND}).")
    model = _str(doc, data.get("model"), ("model",)) if "model" in data else None
    description = data.get("description", "")
    if not isinstance(description, str):
        doc.err(("description",), f"must be a string, not {_kind(description)}.")
    reference = _reference(doc, data["reference"], source) if "reference" in data else ""
    window = _window(doc, data["window"]) if "window" in data else WindowSpec()
    detectors = _detectors(doc, data["detectors"], types) if "detectors" in data else ()
    names = [d.get("name") for d in data.get("detectors") or () if isinstance(d, dict)]
    receivers = _receivers(doc, data["receivers"]) if "receivers" in data else {}
    declared = set(data["receivers"]) if isinstance(data.get("receivers"), dict) else set()
    rules = (
        _rules(
            doc,
            data["rules"],
            [n for n in names if isinstance(n, str)],
            declared,
            receivers_ok=True,
        )
        if "rules" in data
        else ()
    )
    limit = (
        _retrain_limit(doc, data["retrain_limit"]) if "retrain_limit" in data else RetrainLimit()
    )
    schedule = _schedule(doc, data["schedule"], rules) if "schedule" in data else None
    if doc.errors or model is None:
        return None
    return Policy(
        str(source),
        model,
        reference,
        window,
        detectors,
        rules,
        receivers,
        limit,
        str(description),
        schedule,
    )


def _types(detector_types: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if detector_types is not None:
        return detector_types
    from driftwarden.detectors.base import registry

    return registry()


def _read(path: Path, doc: _Doc) -> Any:
    """The plain data of a YAML file; read and YAML problems (duplicate keys included) go to
    ``doc.errors``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        doc.errors.append((1, f"cannot read the file: {e}."))
        return None
    return _compose(text, doc)


def read_yaml_file(path: str | Path) -> Any:
    """A YAML file's plain data, read as strictly as a policy file: a duplicate key (which
    ``yaml.safe_load`` would silently drop) or invalid YAML raises :class:`PolicyError` with
    every problem at ``file:line``. For the other YAML files about policies (policy tests)."""
    doc = _Doc(str(path))
    data = _read(Path(path), doc)
    if doc.errors:
        raise PolicyError(doc.formatted())
    return data


def _load(path: Path, types: Mapping[str, Any]) -> tuple[Policy | None, list[str]]:
    doc = _Doc(str(path))
    data = _read(path, doc)
    if doc.errors:
        return None, doc.formatted()
    policy = _check_policy(doc, data, path, types)
    return policy, doc.formatted()


def load_policy_file(path: str | Path, detector_types: Mapping[str, Any] | None = None) -> Policy:
    """Load and check one policy file; :class:`PolicyError` carries every error of the file.

    ``detector_types`` (type name → Detector class) defaults to the detectors' registry.
    """
    policy, errors = _load(Path(path), _types(detector_types))
    if errors or policy is None:
        raise PolicyError(errors)
    return policy


def _expand(paths: str | Path | Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    errors: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
            if not found:
                errors.append(f"{p}:1: no policy files (*.yaml, *.yml) in this directory.")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            errors.append(f"{p}:1: no such file or directory.")
    return files, errors


def load_policies(
    paths: str | Path | Iterable[str | Path],
    detector_types: Mapping[str, Any] | None = None,
) -> tuple[PolicySet, list[str]]:
    """Load every policy of a directory or file list: the good ones, and every error.

    Two policies for the same exact model name, the same glob, or a glob that matches another
    glob's text (``*`` vs ``churn-*``: which one applies would be ambiguous) are errors; the
    later file is left out.
    """
    types = _types(detector_types)
    files, errors = _expand(paths)
    good: list[Policy] = []
    for f in files:
        policy, errs = _load(f, types)
        errors.extend(errs)
        if policy is None:
            continue
        clash = _clash(policy, good)
        if clash is not None:
            errors.append(clash)
            continue
        good.append(policy)
    return PolicySet(tuple(good)), errors


def _clash(p: Policy, others: list[Policy]) -> str | None:
    for o in others:
        same = p.model == o.model
        overlap = (
            p.is_glob
            and o.is_glob
            and (fnmatch.fnmatchcase(p.model, o.model) or fnmatch.fnmatchcase(o.model, p.model))
        )
        if same or overlap:
            how = "the same model" if same else "overlapping model globs"
            return (
                f"{p.source}:1: model: {p.model!r} and {o.model!r} in {o.source} are "
                f"{how}; which policy applies would be ambiguous."
            )
    return None


def validate_paths(
    paths: str | Path | Iterable[str | Path],
    detector_types: Mapping[str, Any] | None = None,
) -> list[str]:
    """Every error of every policy file (a directory means its ``*.yaml``/``*.yml``)."""
    return load_policies(paths, detector_types)[1]
