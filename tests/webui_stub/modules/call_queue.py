"""Mirrors modules/call_queue.py: the one lock that generations (UI and API) and long jobs run under."""

import threading

queue_lock = threading.Lock()
