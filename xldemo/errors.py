"""The one exception type users see: a bad input, told in one line."""


class XLDemoError(ValueError):
    """Bad input (checkpoint, prompt or settings). Its message is a single line meant for the user."""


def one_line(error: Exception) -> str:
    """An exception's message squeezed onto one line (the first 300 characters), for an XLDemoError's."""
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__
