"""Mirrors modules/call_queue.py: the one lock that generations (UI and API) and long jobs run under, and
how the UI shows a generation's exception (``wrap_gradio_call_no_job``, v1.10.1 lines 64-87)."""

import html
import threading

from modules import errors

queue_lock = threading.Lock()


def wrap_gradio_call_no_job(func, extra_outputs=None):
    """On an exception: ``errors.report`` with the arguments and the traceback, then the outputs with the
    last one ``<div class='error'>`` + the escaped ``"{type}: {message}"`` (style.css gives that div no
    ``white-space`` rule, so line breaks in it render as spaces)."""

    def f(*args, extra_outputs_array=extra_outputs, **kwargs):
        try:
            res = list(func(*args, **kwargs))
        except Exception as e:
            errors.report(f"Error completing request\nArguments: {args} {kwargs}"[:131072], exc_info=True)
            if extra_outputs_array is None:
                extra_outputs_array = [None, '']
            error_message = f'{type(e).__name__}: {e}'
            res = extra_outputs_array + [f"<div class='error'>{html.escape(error_message)}</div>"]
        return tuple(res)

    return f
