"""Mirrors modules/errors.py: ``report`` prints a message (with the traceback) and lets the WebUI go on.

``reported`` is the stand-in's addition: what was reported, so tests can see swallowed exceptions.
"""

import sys
import traceback

reported: list[tuple[str, BaseException | None]] = []


def report(message: str, *, exc_info: bool = False) -> None:
    error = sys.exc_info()[1] if exc_info else None
    reported.append((message, error))
    print("***", message, file=sys.stderr)
    if exc_info:
        print(traceback.format_exc(), file=sys.stderr)


def display(e: Exception, task: str, *, full_traceback: bool = False) -> None:
    reported.append((task, e))
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(e, file=sys.stderr)
