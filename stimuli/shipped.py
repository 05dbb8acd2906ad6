"""TOML files shipped as package data (rig profiles, protocols), found by name or path."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shipped_names", "resolve_shipped"]


def shipped_names(folder: Path) -> list[str]:
    """Names (file stems) of the TOML files shipped in `folder`."""
    return sorted(p.stem for p in folder.glob("*.toml"))


def resolve_shipped(name_or_path: str | os.PathLike[str], folder: Path, old_folder: str, what: str,
                    missing: str | None = None) -> Path:
    """The path if it is a file, else the shipped file of that name in `folder`.

    `NAME`, `NAME.toml` and `OLD_FOLDER/NAME.toml` (the repository's layout before the files became
    package data) name the shipped one from any folder where no such file is.

    Raises:
        FileNotFoundError: "no such <missing>" (default: `what`) and the shipped names, e.g. for
            `what="profile", missing="rig profile"`.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = path.stem if path.suffix == ".toml" else path.name
    shipped = folder / f"{name}.toml"
    if path.parent in (Path("."), Path(old_folder)) and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"{path}: no such {missing or what} (a TOML file, or a shipped {what}: "
                            f"{', '.join(shipped_names(folder))})")
