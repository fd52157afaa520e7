"""The one error of this package that is not an ``ImageRejected``: an option that does not fit the input."""

from __future__ import annotations


class OptionRejected(Exception):
    """A job option is valid on its own but not for this input (e.g. ``frame`` 7 of a 2-frame DICOM).

    ``field`` names the option as the API spells it (``options.frame``); the gateway answers 422.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
