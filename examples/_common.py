"""What every example shares: a pool to run on when none is configured.

With ``SNAKEPIT_POOLS`` or ``SNAKEPIT_CONFIG`` set, the examples use that configuration.
Otherwise they configure one showcase pool (``SNAKEPIT_EXAMPLES_POOL``, default "examples")
through the environment, so the node ``sp.run_as_script`` starts sees it too.
"""

from __future__ import annotations

import json
import os
from typing import Any

SHOWCASE = "adapters.showcase:ShowcaseAdapter"


def use_pool(pool_size: int = 2, **fields: Any) -> str:
    """Configure the examples' pool unless one is configured; return the default pool."""
    if os.environ.get("SNAKEPIT_POOLS") or os.environ.get("SNAKEPIT_CONFIG"):
        import snakepit_tasks as sp

        return sp.default_app().snakepit_settings.default_pool_name
    name = os.environ.get("SNAKEPIT_EXAMPLES_POOL", "examples")
    table = {"name": name, "adapter": SHOWCASE, "pool_size": pool_size, **fields}
    os.environ["SNAKEPIT_POOLS"] = json.dumps([table])
    # Running as root is common in containers; the examples need not warn about it.
    os.environ.setdefault("PYTHONWARNINGS",
                          "ignore:You're running the worker with superuser privileges")
    return name


def say(title: str, value: Any = None) -> None:
    """Print one line of an example's output."""
    print(f"{title}" + (f"  ->  {value}" if value is not None else ""), flush=True)
