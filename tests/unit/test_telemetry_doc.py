"""The README's event list is the code's EVENTS table (python -m snakepit_tasks.telemetry.doc)."""

from __future__ import annotations

from pathlib import Path

from snakepit_tasks.telemetry import EVENTS, doc


def test_the_readme_lists_exactly_the_events_of_the_code() -> None:
    text = doc.README.read_text()
    assert doc.render(text) == text, (
        "README's event list differs from snakepit_tasks.telemetry.EVENTS: "
        "run `python -m snakepit_tasks.telemetry.doc`"
    )
    table = text.split(doc.BEGIN)[1].split(doc.END)[0]
    assert table.count("\n| `(") == len(EVENTS)


def test_check_mode_reports_a_stale_readme(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n{doc.BEGIN}\n| old |\n{doc.END}\nrest\n")
    assert doc.main(["--check", "--readme", str(stale)]) == 1
    assert doc.main(["--readme", str(stale)]) == 0
    assert doc.main(["--check", "--readme", str(stale)]) == 0
    assert stale.read_text().endswith(f"{doc.END}\nrest\n")
