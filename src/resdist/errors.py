"""The one exception family of resdist.

Every error a user can cause (a bad flag, file, config value or checkpoint) derives from
:class:`ResdistError`; its message is one line that says what is wrong and what to do. The CLI
catches this one type, prints the message and exits with status 2. Each subclass also derives
from the built-in type its callers used to catch (``ValueError`` or ``RuntimeError``), so
existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class ResdistError(Exception):
    """Base of every user-facing resdist error (one clear line, no traceback needed)."""
