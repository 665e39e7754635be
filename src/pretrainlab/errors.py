"""User-facing errors.

A `UserError` is bad input the user can fix (a config field, a path, a corpus). The CLI
prints its message on one line and exits with code 2, with no traceback. Everything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and the fix, on one line."""

    exit_code = 2


class LedgerError(UserError):
    """The ledger cannot be used as it is now (locked, damaged, read-only, its disk full, its
    server unreachable): the message names the ledger, the problem and the fix."""
