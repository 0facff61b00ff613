"""The lab's one error type."""
from __future__ import annotations


class LabError(Exception):
    """A lab operation cannot be done; the message is one line that says why and what to do."""
