"""The README's first screen: the quick start it shows is the script that CI runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_start_block_is_examples_quickstart() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("`examples/quickstart.py`:\n\n```python\n", 1)[1].split("```", 1)[0]
    script = (ROOT / "examples" / "quickstart.py").read_text()
    tree = ast.parse(script)
    docstring_end = tree.body[0].end_lineno if ast.get_docstring(tree) else 0
    body = "\n".join(script.splitlines()[docstring_end:]).strip() + "\n"
    assert block == body


def test_the_quick_start_is_three_commands_on_the_first_screen() -> None:
    readme = (ROOT / "README.md").read_text()
    first = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first.splitlines() if line.strip()]
    assert len(commands) == 3
    assert "snakepit_tasks.embedded_redis" in commands[0]
    assert "snakepit-tasks worker" in commands[1]
    assert "examples/quickstart.py" in commands[2]
    assert readme.index("make demo") < readme.index("## Quick start") < 1500


def test_nothing_points_outside_the_repository() -> None:
    found = []
    for path in ROOT.rglob("*"):
        if any(part in {".git", ".venv", "node_modules"} or part.endswith(".egg-info")
               or part.startswith(".") and part not in {".ci"} for part in path.relative_to(
                   ROOT).parts):
            continue
        if not path.is_file() or path.suffix not in {".md", ".py", ".toml", ".yml", ".yaml",
                                                      ".txt", ".cfg", ""}:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for match in re.finditer(r"\.\./shared|/work/shared|DESIGN\.md", text):
            if path.name != "test_readme.py":
                found.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not found, found
