"""The one exception type users see. The CLI prints its message and exits 2."""


class TdkstainError(Exception):
    """A problem the user can fix: the message names the file and what to do."""
