"""Turn expected failures (bad input, missing files) into one clear line and exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.markup import escape

from insilico.console import err_console


class InsilicoError(Exception):
    """A problem the user can fix (bad argument, missing model, wrong data); no traceback."""


# Expected failures: what a user can cause and fix. Anything else is a bug and keeps its traceback.
# ImportError: a twin command on the rig computer, which has no torch (docs/install.md).
EXPECTED = (InsilicoError, ValueError, FileNotFoundError, KeyError, FileExistsError, PermissionError,
            ImportError)


@contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except EXPECTED as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        # Messages name TOML tables ([evaluation] data) and sections: text, not console markup.
        err_console.print(f"[bold red]error:[/] {escape(str(message))}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    except KeyboardInterrupt:
        # Commands that can resume (train, run, demo) catch this first and say how.
        err_console.print("[yellow]interrupted[/]: the files written so far are whole (each is written to a temporary name "
                          "and renamed); run the command again for the rest", soft_wrap=True)
        raise typer.Exit(code=130) from None
