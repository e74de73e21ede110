"""Benchmarks for snakepit-tasks: ``python -m bench.run_all [--quick]`` (see bench/README.md).

Not tests: nothing here is collected by pytest.
"""
