"""Mirrors modules/errors.py: ``report`` prints a message (with the traceback) and lets the WebUI go on
(v1.10.1 lines 38-50: each line of the message after "***", the traceback indented by four spaces, "---").

``reported`` is the stand-in's addition: what was reported, so tests can see swallowed exceptions.
"""

import sys
import textwrap
import traceback

reported: list[tuple[str, BaseException | None]] = []


def report(message: str, *, exc_info: bool = False) -> None:
    error = sys.exc_info()[1] if exc_info else None
    reported.append((message, error))
    for line in message.splitlines():
        print("***", line, file=sys.stderr)
    if exc_info:
        print(textwrap.indent(traceback.format_exc(), "    "), file=sys.stderr)
        print("---", file=sys.stderr)


def display(e: Exception, task: str, *, full_traceback: bool = False) -> None:
    reported.append((task, e))
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    print(e, file=sys.stderr)
