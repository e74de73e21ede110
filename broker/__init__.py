"""Redis-side pieces (Lua scripts), installed as ``snakepit_tasks.broker``."""
