"""Celery entry point for nodes: ``celery -A snakepit_tasks.node.entry worker ...``.

Importing this module reads the settings (``SNAKEPIT_CONFIG`` and ``SNAKEPIT_*``): it is the
node's program, not a library module. Run as a worker, it also starts the pool's zygote at
once (see :mod:`.prestart`), before the app's own imports, so the zygote imports the runtime
while they run; the node step adopts it.
"""

import sys

from ..config import load_settings
from . import prestart

settings = load_settings()
zygote = prestart.start(settings, sys.argv)

from ..app import create_app, set_default_app  # noqa: E402 - after the zygote's start

app = create_app(settings)
app.snakepit_zygote = zygote
set_default_app(app)
