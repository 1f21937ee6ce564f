"""The one exception type users see: a bad input, told in one line."""


class XLDemoError(ValueError):
    """Bad input (checkpoint, prompt or settings). Its message is a single line meant for the user."""
