"""The README's event list, generated from :data:`~snakepit_tasks.telemetry.EVENTS`.

``python -m snakepit_tasks.telemetry.doc`` rewrites the table between the README's
``<!-- events:begin -->`` and ``<!-- events:end -->`` markers; ``--check`` exits 1 when it
differs (a test runs the check, so the README and the code cannot drift apart).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .events import EVENTS

BEGIN, END = "<!-- events:begin -->", "<!-- events:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def _keys(keys: tuple[str, ...]) -> str:
    return ", ".join(
        k.replace("<", "&lt;").replace(">", "&gt;") if k.startswith("<") else f"`{k}`"
        for k in keys
    ) or "—"


def events_table() -> str:
    """The Markdown table of every event."""
    lines = ["| event | fires in | when | measurements | metadata |", "|---|---|---|---|---|"]
    for event, spec in EVENTS.items():
        name = ", ".join(f'"{part}"' for part in event)
        lines.append(f"| `({name})` | {spec.side} | {spec.description} | "
                     f"{_keys(spec.measurements)} | {_keys(spec.metadata)} |")
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` (the README) with the generated table between the markers."""
    try:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"the README has no {BEGIN} ... {END} markers") from None
    return f"{head}{BEGIN}\n{events_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snakepit_tasks.telemetry.doc")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs")
    parser.add_argument("--readme", type=Path, default=README)
    ns = parser.parse_args(argv)
    text = ns.readme.read_text()
    wanted = render(text)
    if ns.check:
        if wanted != text:
            print(f"{ns.readme}: the event list differs from snakepit_tasks.telemetry.EVENTS; "
                  "run `python -m snakepit_tasks.telemetry.doc`", file=sys.stderr)
            return 1
        return 0
    if wanted != text:
        ns.readme.write_text(wanted)
        print(f"updated the event list in {ns.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
