"""Celery entry point for nodes: ``celery -A snakepit_tasks.node.entry worker ...``.

Importing this module reads the settings (``SNAKEPIT_CONFIG`` and ``SNAKEPIT_*``): it is the
node's program, not a library module.
"""

from ..app import create_app, set_default_app
from ..config import load_settings

app = create_app(load_settings())
set_default_app(app)
