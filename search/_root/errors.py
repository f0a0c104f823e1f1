"""The one exception type for user mistakes: the command line turns it into a one-line message.

It lives at the root of the package, below every subpackage, so that each can raise it.
"""


class VitParetoError(ValueError):
    """Bad input from the user: an invalid candidate, an unsupported model, a bad file.

    The message names what is wrong and how to fix it; the command line prints it
    without a traceback and exits with status 2.
    """
