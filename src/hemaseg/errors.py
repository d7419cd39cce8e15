"""What hemaseg refuses, as exceptions: one base the command line catches and says in one line.

Every message names the file or the setting and what is wrong with it. An exception that is not a
:class:`HemasegError` (nor an operating-system error) is a defect of hemaseg, shown with its traceback.
"""

from __future__ import annotations


class HemasegError(Exception):
    """Base of every refusal: bad input data, an unusable model file, a setting out of its range."""


class SettingError(HemasegError, ValueError):
    """An option or configuration value that is unknown, out of its range or in conflict with another.

    >>> issubclass(SettingError, ValueError)  # callers that catch ValueError keep working
    True
    """
