"""A ``certify`` run that has opened (and so locked) its run folder and pauses before its first image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_HOLD_THE_FOLDER = """
import sys, time
from pathlib import Path
from verifier.api import open_run
from verifier.config import VerifierConfig
run = open_run(sys.argv[1], [sys.argv[2]], Path(sys.argv[3]), VerifierConfig(device="cpu", inversion_steps=2,
               framing_steps=2, generations=2, batch_size=1), allow_pickle=False, model_config=None, sign_key=None,
               say=lambda m: None)
print("opened", flush=True)
time.sleep(600)
"""


def hold_the_folder(model: Path, images: Path, out: Path) -> subprocess.Popen:
    """Start the holder and return once it holds ``out``'s lock; the caller kills it."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THE_FOLDER, str(model), str(images), str(out)],
                              stdout=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    line = holder.stdout.readline().strip()
    if line != "opened":
        holder.kill()
        raise AssertionError(f"the holder did not open {out}: {line!r}")
    return holder
