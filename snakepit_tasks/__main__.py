"""``python -m snakepit_tasks`` is the ``snakepit-tasks`` command."""

import sys

from .cli import main

sys.exit(main())
