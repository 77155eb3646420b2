"""The policy reference in Markdown, generated from the JSON Schema and the detector registry.

``python -m driftwarden.daemon.policydoc > docs/POLICY_REFERENCE.md`` (a test keeps the checked-in
file current). Top-level keys and nested objects come from ``policies/schema.json``; each
detector type's parameters from its ``params_schema`` and the first line of its docstring.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from driftwarden.detectors.base import registry

__all__ = ["render"]


def _type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node:
        return f"`{node['$ref'].rsplit('/', 1)[-1]}`"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "type" not in node:
        for key in ("oneOf", "anyOf"):
            if key in node:
                return " or ".join(_type(n, defs) for n in node[key])
    t = node.get("type", "any")
    signs = {"minimum": "≥", "maximum": "≤", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    bounds = [f"{sign} {node[k]}" for k, sign in signs.items() if k in node]
    if t == "array" and "items" in node:
        t = f"list of {_type(node['items'], defs)}"
    return f"{t}" + (f" ({', '.join(bounds)})" if bounds else "")


def _table(props: dict[str, Any], required: list[str], defs: dict[str, Any]) -> list[str]:
    rows = ["| key | type | required | meaning |", "|---|---|---|---|"]
    for key, node in props.items():
        desc = node.get("description", "").replace("\n", " ").replace("|", "\\|")
        rows.append(
            f"| `{key}` | {_type(node, defs)} | {'yes' if key in required else ''} | {desc} |"
        )
    return rows


def render() -> str:
    """The whole reference as Markdown."""
    schema = json.loads((files("driftwarden.policies") / "schema.json").read_text())
    defs = schema.get("$defs", {})
    out = [
        "# Policy reference",
        "",
        "Generated from `policies/schema.json` and the detector registry by "
        "`python -m driftwarden.daemon.policydoc`; do not edit by hand.",
        "",
        schema.get("description", ""),
        "",
        "## Top level",
        "",
        *_table(schema["properties"], schema.get("required", []), defs),
    ]
    for name, node in defs.items():
        if node.get("type") == "object" and node.get("properties"):
            out += ["", f"## `{name}`", "", node.get("description", ""), ""]
            out += _table(node["properties"], node.get("required", []), defs)
    for key, node in schema["properties"].items():
        if node.get("type") == "object" and node.get("properties"):
            out += ["", f"## `{key}`", ""]
            out += _table(node["properties"], node.get("required", []), defs)
    out += ["", "## Detector types", ""]
    for kind, cls in sorted(registry().items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        out += [f"### `{kind}` (stream: {cls.stream})", "", doc, ""]
        ps = cls.params_schema
        out += _table(dict(ps.get("properties", {})), list(ps.get("required", [])), defs)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
