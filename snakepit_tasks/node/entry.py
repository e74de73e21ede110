"""Celery entry point for nodes: ``celery -A snakepit_tasks.node.entry worker ...``.

Importing this module reads the settings (``SNAKEPIT_CONFIG`` and ``SNAKEPIT_*``): it is the
node's program, not a library module. Run as a worker, it also starts the pool's zygote at
once (see :mod:`.prestart`); the node step adopts it.
"""

import sys

from ..app import create_app, set_default_app
from ..config import load_settings
from . import prestart

settings = load_settings()
zygote = prestart.start(settings, sys.argv)
app = create_app(settings)
app.snakepit_zygote = zygote
set_default_app(app)
