"""What is wrong with a path that does not lead anywhere: a symbolic link that loops or points to nothing.

``Path.exists()`` says False for both, and ``Path.resolve()`` raises on a loop, so without this a link
reads as "does not exist" or as an unexpected error; the messages name the link and what it points to.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def broken_link(path: Path) -> str | None:
    """Why ``path`` is a symbolic link that leads nowhere (a loop, or a target that does not exist), else None."""
    if not path.is_symlink():
        return None
    loop = f"is a symbolic link that loops (to {os.readlink(path)!r} and on, back to itself)"
    try:
        path.resolve(strict=True)
    except RuntimeError:  # how Python before 3.13 reports a loop
        return loop
    except OSError as error:
        if error.errno == errno.ELOOP:
            return loop
        return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
    return None
