"""Which job an output folder belongs to, so that re-running a job finishes it exactly once.

The folder records the job's fingerprint in `_latentmill_job.json`; a different job is refused. What
the folder already holds is the output store's to say (io.outputs: `OutputStore.resume`).
"""

from __future__ import annotations

import json
from typing import Any

JOB_RECORD = "_latentmill_job.json"


class OutputConflict(Exception):
    """The output folder belongs to a different job."""


def check_job_record(fs, root: str, fingerprint: str, description: dict[str, Any]) -> bool:
    """Refuse a folder made by a different job; returns whether this is a resumed run."""
    from latentmill.io.storage import join, put_bytes, read_bytes

    path = join(root, JOB_RECORD)
    if fs.exists(path):
        record = json.loads(read_bytes(fs, path))
        if record.get("fingerprint") != fingerprint:
            raise OutputConflict(
                f"the output {description['output']} holds results of a different job "
                f"(fingerprint {record.get('fingerprint')}, this job is {fingerprint}: the model, generation "
                "defaults, limits, formats or input differ). Write to a new output, or delete that folder to "
                "start over; re-running the original command resumes it"
            )
        return True
    put_bytes(fs, path, json.dumps({"fingerprint": fingerprint, **description}, indent=2, default=str).encode())
    return False
