"""Regenerate the README's sample output from the command printed above it (and check it: --check).

The README shows `$ .venv/bin/llmrec run specs/quickstart.yaml --input '...'` followed by a JSON block. This script
runs that request through llmrec and writes the block, one item per two lines as the README prints it, so the
sample never drifts from what the command prints; tests/test_readme.py fails when they differ.

    .venv/bin/python scripts/readme_samples.py [--check]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SAMPLE = re.compile(r"```json\n\$ \.venv/bin/llmrec run (?P<spec>\S+) --input '(?P<input>[^']*)'\n(?P<body>.*?)\n```",
                    re.S)


def sample(text: str) -> re.Match[str]:
    m = SAMPLE.search(text)
    if m is None:
        raise SystemExit("README.md has no ```json block starting with `$ .venv/bin/llmrec run SPEC --input '...'`")
    return m


def run(spec: str, inputs: dict[str, Any]) -> dict[str, Any]:
    import llmrec

    return llmrec.run(ROOT / spec, inputs).outputs_json()


def render(outputs: dict[str, Any]) -> str:
    """The README's layout: the outer keys as JSON, each item on two lines."""
    recs = outputs["recommendations"]
    lines = ["{", '  "recommendations": {']
    for key in (k for k in recs if k != "items"):
        lines.append(f"    {json.dumps(key)}: {json.dumps(recs[key])},")
    lines.append('    "items": [')
    items = recs["items"]
    for i, item in enumerate(items):
        head = {k: item[k] for k in ("rank", "id", "title", "category")}
        tail = {k: v for k, v in item.items() if k not in head}
        comma = "," if i < len(items) - 1 else ""
        lines.append("      {" + json.dumps(head)[1:-1] + ",")
        lines.append("       " + json.dumps(tail)[1:-1] + "}" + comma)
    lines += ["    ]", "  }", "}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when the README is stale")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    m = sample(text)
    fresh = render(run(m["spec"], json.loads(m["input"])))
    if fresh == m["body"]:
        print("README sample is current")
        return 0
    if args.check:
        print("README sample is stale; run: .venv/bin/python scripts/readme_samples.py", file=sys.stderr)
        return 1
    README.write_text(text[:m.start("body")] + fresh + text[m.end("body"):], encoding="utf-8")
    print("README sample rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
