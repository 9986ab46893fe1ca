"""Reading and writing result records (``result.json``), atomically."""

from __future__ import annotations

import json
from pathlib import Path

from cxrbench.errors import CxrbenchError
from cxrbench.report.schema import ResultRecord
from cxrbench.runs import RESULT_FILE as RESULT_FILE
from cxrbench.utils.io import atomic_write_text


def write_record(path: Path, record: ResultRecord) -> None:
    """Write ``record`` as JSON; readers see the old file or the whole new one, never half."""
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")


def read_record(path: Path) -> ResultRecord:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CxrbenchError(f"{path}: unreadable result record ({err})") from None
    if not isinstance(data, dict):
        raise CxrbenchError(f"{path}: a result record is a JSON object")
    return ResultRecord.from_dict(data, path)


def collect(root: Path) -> list[ResultRecord]:
    """Every record under ``root``, in a stable order (a suite is a folder: ``runs/<suite>/``)."""
    return [record for _, record in collect_paths(root)]


def collect_paths(root: Path) -> list[tuple[Path, ResultRecord]]:
    """Every record under ``root`` with the path of its ``result.json``, in a stable order."""
    return [(p, read_record(p)) for p in sorted(Path(root).rglob(RESULT_FILE))]
