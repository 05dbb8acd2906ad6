"""The toolkit's own error types: the problems a user can cause and fix.

Every package above `stimuli` raises these (or subclasses of them) for bad input: a setting out
of range, a file that breaks its format, a model or backbone that is not there. The command line
prints them as one line naming the file and the dataset or setting; any other exception is a bug
and keeps its traceback (`insilico.errors.friendly_errors`).

Each type also derives from the built-in a Python caller would expect (`ValueError` for a bad
value, `KeyError` for an unknown name), so `except ValueError` in a notebook keeps working.
"""

from __future__ import annotations


class InsilicoError(Exception):
    """A problem the user can fix (bad setting, wrong data, missing model); printed in one line."""


class InputError(InsilicoError, ValueError):
    """A setting, an argument or a file's content outside what the toolkit accepts.

    The message names the setting (`n_frames`), not a command-line flag: a protocol file or a
    notebook sets the same value under that name.
    """


class NotFoundError(InsilicoError, KeyError):
    """A name the user gave (a cell id, a segment) that the file or twin does not hold."""

    def __str__(self) -> str:
        # KeyError's str() is the repr of its key; the message is a sentence.
        return str(self.args[0]) if self.args else ""
