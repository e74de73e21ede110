"""The sub-commands of ``snakepit-tasks`` that report or write something (status, doctor,
setup, gen); :mod:`snakepit_tasks.cli` parses the command line and calls them."""
