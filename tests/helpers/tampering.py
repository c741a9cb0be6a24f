"""Tamper with one written certificate and see what ``verify`` says (shared by the framing tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def failed_checks_after(out: Path, image_id: str, change: Callable[[dict], None]) -> set[str]:
    """The names of the checks ``verify(out)`` fails once ``change`` has edited ``image_id``'s certificate; the
    certificate is put back afterwards, so one run serves several tamperings."""
    from verifier.verify import verify

    path = out / f"{image_id}.json"
    original = path.read_text()
    certificate = json.loads(original)
    change(certificate)
    path.write_text(json.dumps(certificate))
    try:
        return {check.name for check in verify(out).checks if not check.passed}
    finally:
        path.write_text(original)
