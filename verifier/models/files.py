"""What a weights file is: the error every loading problem raises, and the checks made before diffusers reads a file
(pickle or safetensors, and whether a safetensors file is one)."""

from __future__ import annotations

from pathlib import Path

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


class ModelLoadError(RuntimeError):
    """MODEL (or an adapter on it) could not be loaded; the message says what was tried and what is missing."""


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a safetensors file (what it looks like instead, or safetensors' own complaint about
    its header and sizes), else None; read before diffusers, whose message for it is a generic one.

    safetensors' own reader decides first: a real file's first byte is the low byte of its header's length, which
    is 0x80 (pickle's first byte) in one file of 256."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except (SafetensorError, OSError, ValueError) as error:
        complaint = error
    with open(path, "rb") as handle:
        start = handle.read(8)
    if start[:1] == b"\x80":
        return "it starts like a pickle"
    if start[:4] == b"PK\x03\x04":
        return "it is a zip archive (torch.save's format, a pickle inside)"
    return f"its header or sizes are broken ({complaint})"


def check_adapter_file(path: Path, what: str, allow_pickle: bool, expected: str) -> None:
    """Refuse, naming ``what`` (the argument), an adapter file that is missing, a folder, a pickle without
    ``allow_pickle``, of an unknown kind, or a ``.safetensors`` file that is not one; ``expected`` says what it should
    be."""
    from verifier.paths import broken_link

    if not path.is_file():
        link = broken_link(path)
        raise ModelLoadError(f"{what} {link or ('is a folder, not a file' if path.is_dir() else 'does not exist')}: "
                             f"expected {expected}")
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(f"{what} is a pickle file ({suffix}), which can run code when loaded; convert it to "
                             ".safetensors, or pass --allow-pickle if you trust it")
    if suffix not in PICKLE_SUFFIXES + (".safetensors",):
        raise ModelLoadError(f"{what} is a file of unknown kind {suffix!r}: expected {expected}")
    if suffix == ".safetensors" and (problem := safetensors_problem(path)):
        raise ModelLoadError(f"{what} is not a safetensors file: {problem}")
