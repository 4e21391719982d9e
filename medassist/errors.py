"""The one exception type for problems a user can cause and fix."""


class MedassistError(Exception):
    """A bad file, an unknown model, an unreachable PACS...

    The message names the thing and the reason; the CLI prints it without a traceback.
    """
