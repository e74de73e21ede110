"""Adapters bundled with snakepit-tasks: ``showcase`` (demo and tests) and ``template``."""
