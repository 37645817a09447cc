"""What the test suite and bench/ share: victims and their builder, the /proc reader, waiting
with a deadline, the real daemon's harness, checks of cores and state directories.

One package, one import style: pytest puts tests/ on ``sys.path`` (``pythonpath`` in
pyproject.toml), bench/ scripts put it there themselves, and everything is imported as
``from support.victims import build_victim``. Fixtures live in conftest.py files and build on
what is here; nothing here is a fixture, so a module can be used outside pytest (bench/, a child
process started with :func:`support.paths.child_env`).
"""
