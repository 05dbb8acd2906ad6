"""Check an NWB file with `nwbinspector`, the NWB community's own best-practice checker."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    importance: str  # CRITICAL, BEST_PRACTICE_VIOLATION, BEST_PRACTICE_SUGGESTION
    check: str
    location: str
    message: str


def inspect_nwb(path: str | os.PathLike[str]) -> list[Finding]:
    """Every finding of nwbinspector's default checks, most important first."""
    from nwbinspector import inspect_nwbfile

    found = [Finding(m.importance.name, m.check_function_name, str(m.location or ""), m.message)
             for m in inspect_nwbfile(nwbfile_path=str(path))]
    rank = {"ERROR": 0, "PYNWB_VALIDATION": 1, "CRITICAL": 2, "BEST_PRACTICE_VIOLATION": 3}
    return sorted(found, key=lambda f: rank.get(f.importance, 4))


def critical(findings: list[Finding]) -> list[Finding]:
    """The findings an archive would refuse the file for (nwbinspector's CRITICAL and errors)."""
    return [f for f in findings if f.importance in ("ERROR", "PYNWB_VALIDATION", "CRITICAL")]
