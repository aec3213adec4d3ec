class UserError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""
