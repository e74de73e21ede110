"""``snakepit-tasks gen adapter NAME``: a new adapter module and its test, from the templates
in ``adapters/`` (``template.py`` and ``test_template.py``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def class_name(module: str) -> str:
    """The adapter class of module ``module``: ``my_thing`` → ``MyThingAdapter``."""
    return "".join(part[:1].upper() + part[1:] for part in module.split("_") if part) + "Adapter"


def render(name: str) -> tuple[str, str]:
    """The text of ``NAME.py`` and ``test_NAME.py``."""
    import adapters

    folder = Path(adapters.__file__).resolve().parent
    cls = class_name(name)
    module = (folder / "template.py").read_text()
    module = module.replace("TemplateAdapter", cls).replace("my_package.my_module", name)
    test = (folder / "test_template.py").read_text()
    for old, new in (
        ("test_template.py", f"test_{name}.py"),
        ("template.py", f"{name}.py"),
        ('"adapters.template"', f'"{name}"'),
        ('"test-template"', f'"test-{name[:59]}"'),  # pool names have at most 64 characters
        ("TemplateAdapter", cls),
    ):
        test = test.replace(old, new)
    return module, test


def write(name: str, directory: str) -> int:
    """Write the module and its test into ``directory``; print the next steps. Exit code 0,
    or 2 for a bad name or a file that exists already."""
    if not MODULE_NAME.fullmatch(name):
        print(f"error: {name!r} is not a valid Python module name (letters, digits and '_', "
              "not starting with a digit)", file=sys.stderr)
        return 2
    folder = Path(directory).resolve()
    target, test_target = folder / f"{name}.py", folder / f"test_{name}.py"
    for path in (target, test_target):
        if path.exists():
            print(f"error: {path} already exists; pick another name or --dir", file=sys.stderr)
            return 2
    module, test = render(name)
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(module)
    test_target.write_text(test)
    cls = class_name(name)
    print(f"wrote {target}  (class {cls}: tools hello, count)")
    print(f"wrote {test_target}  (imports it, starts a pool with it, calls its tools)")
    print(f"""
next steps:
  1. make the module importable by the worker and by doctor: run them from {folder},
     or export PYTHONPATH={folder}
     (or give the pool  adapter_env = {{ PYTHONPATH = "{folder}" }})
  2. add the pool to your configuration file (named by SNAKEPIT_CONFIG):
       [[pools]]
       name = "{name}"
       adapter = "{name}:{cls}"
  3. check it:      snakepit-tasks doctor
  4. test it:       python -m pytest {test_target}
  5. serve it:      snakepit-tasks worker --pool {name}
     and call it:   sp.execute("hello", {{"name": "you"}}, pool="{name}")""")
    return 0
