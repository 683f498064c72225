"""Errors a user can cause and fix: the CLI prints them as one line, without a traceback."""


class VdError(Exception):
    """A problem with the user's input (a path, a recipe, a checkpoint, an option).

    The message is the whole interface: say what is wrong, where, and what to do.
    """
