"""The root of every error a user can cause: the CLI prints these as one clear line, never a traceback."""


class UserError(Exception):
    """Bad input, a missing file, an impossible setting: something the user can fix from the message."""
