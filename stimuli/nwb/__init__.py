"""NWB (Neurodata Without Borders) files in and out of recording-v1 (see docs/nwb.md).

Needs `pynwb` (and `nwbinspector` for `inspect_nwb`), not torch: the rig computer may use it.
"""

from stimuli.nwb.errors import NwbError
from stimuli.nwb.exporter import DesignRecord, NwbExportReport, NwbSessionMetadata, export_nwb
from stimuli.nwb.importer import ImportedSegment, NwbImportReport, NwbImportSettings, import_nwb
from stimuli.nwb.inspect import Finding, critical, inspect_nwb

__all__ = [
    "DesignRecord",
    "Finding",
    "ImportedSegment",
    "NwbError",
    "NwbExportReport",
    "NwbImportReport",
    "NwbImportSettings",
    "NwbSessionMetadata",
    "critical",
    "export_nwb",
    "import_nwb",
    "inspect_nwb",
]
