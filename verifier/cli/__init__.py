"""The ``verifier`` command: a thin layer over the library's entry points, one file per command.

Exit codes (every command):

- 0: nothing at or above ``--fail-on`` (certify), the demo agrees with its ground truth, or every
  check passed (verify);
- 1: memorization found / the gate failed / a check failed: the *answer*, never a crash;
- 2: usage error (bad option, config value, image argument, output folder);
- 3: runtime error (model cannot load, metric weights missing, anything unexpected);
- 130: interrupted (Ctrl-C); every finished certificate is kept and a rerun resumes.

Heavy libraries are imported inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

from verifier.cli import calibrate, certify, demo, ls, report, schema, verify  # each registers its command on ``main``
from verifier.cli.base import main

__all__ = ["main", "calibrate", "certify", "demo", "ls", "report", "schema", "verify"]
