"""The one exception type for problems a user can fix (a bad param, input or missing step)."""

from __future__ import annotations


class TaglensError(ValueError):
    """A problem the user can fix; entry points print its message as one line and exit 2.

    Its message says what is wrong and what to do. Anything else raised (a bug) keeps its
    traceback. It is a ValueError so callers that catch bad values keep working.
    """
