"""Turn a user's errors into one clear line and exit code 2; a bug keeps its traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.markup import escape

from insilico.console import err_console
from stimuli.errors import InsilicoError

# What a user can cause and fix: the toolkit's own errors (bad setting, bad file, missing model)
# and a file they named that is missing, already there, or not theirs to write. A KeyError or a
# ValueError from anywhere else is a bug: it keeps its traceback.
USER_ERRORS = (InsilicoError, FileNotFoundError, FileExistsError, PermissionError)

# Packages a machine may lack by design: the rig computer has no torch (docs/install.md), the
# render and postgres extras are optional. An ImportError naming any other module is a bug.
OPTIONAL_PACKAGES = frozenset({"torch", "transformers", "captum", "optuna", "cmaes", "nwbinspector",
                               "psychopy", "psycopg2"})


def missing_optional_package(err: ImportError) -> str | None:
    """The optional package whose absence raised `err`, or None when `err` is a bug."""
    top = (err.name or "").split(".")[0]
    return top if top in OPTIONAL_PACKAGES else None


@contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as err:
        _fail(str(err))
    except ImportError as err:
        package = missing_optional_package(err)
        if package is None:
            raise
        _fail(f"{package} is not installed on this machine, and this command needs it (see docs/install.md)")
    except KeyboardInterrupt:
        # Commands that can resume (train, run, demo) catch this first and say how.
        err_console.print("[yellow]interrupted[/]: the files written so far are whole (each is written to a temporary name "
                          "and renamed); run the command again for the rest", soft_wrap=True)
        raise typer.Exit(code=130) from None


def _fail(message: str) -> None:
    # Messages name TOML tables ([evaluation] data) and sections: text, not console markup.
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2) from None
