"""The one base class of errors a user causes (a bad option, input file or name).

``ctrflow`` ends such an error with one message on stderr and exit code 2 (no
traceback); any other exception is a bug and keeps its traceback. Raise a subclass of
:class:`UserError` (or ``UserError`` itself) whenever the fix is in the user's hands:
the message names the key / field / file / row and what is expected.
It is a ``ValueError``, so callers that catch ``ValueError`` keep working.
"""


class UserError(ValueError):
    """Something the user can fix: the message says what, where and what is expected."""
