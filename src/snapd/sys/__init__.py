"""System-call bindings: the one place snapd talks to libc through ctypes.

libc is loaded once (:mod:`snapd.sys.libc`); each module binds one family of calls, raises
``OSError`` with the real errno, and knows nothing of targets, rules or cores. Callers turn the
errno into typed errors (:mod:`snapd.errors`) at their own boundary.
"""
