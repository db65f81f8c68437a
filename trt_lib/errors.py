"""Error types of trt_lib.

Every error a user can cause is a :class:`TrtError` whose message says what is wrong and how to fix it.
``status_code`` is what the WebUI's API middleware answers with (it reads that attribute of an exception).
"""

from __future__ import annotations

import threading


class TrtError(Exception):
    """Base of all errors raised on purpose by trt_lib; the message is meant for the user."""

    status_code = 400


class ProfileError(TrtError, ValueError):
    """A shape profile (batch, width, height, tokens) is invalid."""

    status_code = 422


class FamilyError(TrtError, ValueError):
    """An unknown model family, or a UNet that matches no family."""

    status_code = 422


class NoProfileError(TrtError):
    """No engine profile covers the shapes a request needs."""

    status_code = 422

    def __init__(self, message: str, needs: list[str] | None = None) -> None:
        super().__init__(message)
        self.needs = needs or [message]
        """One sentence per uncovered call ("Needed: …"), e.g. for a one-line reason in the infotext."""


class StoreError(TrtError):
    """The engine store or its manifest cannot be read or written."""

    status_code = 500


class UnrecordedEngineError(StoreError):
    """An engine file the manifest lacks whose record is missing or does not fit it: it can only be deleted."""

    status_code = 409


class UnsafeNameError(TrtError, ValueError):
    """A checkpoint or engine name that cannot be used safely as a file name."""

    status_code = 422


class ExportError(TrtError):
    """Exporting the UNet to ONNX failed."""

    status_code = 500


class BuildError(TrtError):
    """Building an engine failed."""

    status_code = 500


class BuildTargetError(BuildError, ValueError):
    """The chosen build target (GPU or compute capability) is not one the backend can build for: a setting
    the user can change, hence 422 rather than a server error."""

    status_code = 422


class BuildCancelled(TrtError):
    """A build was cancelled by the user; nothing was written."""

    status_code = 409

    @classmethod
    def check(cls, cancel: threading.Event | None) -> None:
        """Stop here once the user has cancelled (``cancel`` set)."""
        if cancel is not None and cancel.is_set():
            raise cls("build cancelled; nothing was written")


class BackendUnavailableError(TrtError):
    """The chosen backend (TensorRT or TensorRT for RTX) cannot be imported or cannot run here."""

    status_code = 503


class EngineRunError(TrtError):
    """An engine failed while running (shapes it does not accept, a runtime error)."""

    status_code = 500
