"""Optional Ed25519 signatures over certificates and summaries (the ``cryptography`` package).

``certify --sign-key KEY.pem`` writes ``<file>.sig`` beside each certificate and ``summary.json``:
the base64 Ed25519 signature of the file's exact bytes. ``verify --public-key PUB.pem`` checks
them. Keys are standard PEM files, for example from OpenSSL::

    openssl genpkey -algorithm ed25519 -out key.pem
    openssl pkey -in key.pem -pubout -out key.pub.pem

An encrypted private key is read with the password in ``VERIFIER_SIGN_KEY_PASSWORD``. Without a
key nothing is signed and nothing changes.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

SIGNATURE_SUFFIX = ".sig"


class SigningError(ValueError):
    """A key that cannot be used for signing or checking; the message names it."""


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SigningError("signing needs the 'cryptography' package: pip install 'verifier[sign]'") from None
    return serialization, ed25519, InvalidSignature


def load_private_key(path: str | Path):
    serialization, ed25519, _ = _crypto()
    password = os.environ.get("VERIFIER_SIGN_KEY_PASSWORD")
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(),
                                                 password=password.encode() if password else None)
    except (OSError, ValueError, TypeError) as error:
        raise SigningError(f"--sign-key {str(path)!r} is not a readable PEM private key: {error}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"--sign-key {str(path)!r} is a {type(key).__name__}; verifier signs with Ed25519 keys")
    return key


def load_public_key(path: str | Path):
    serialization, ed25519, _ = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise SigningError(f"--public-key {str(path)!r} is not a readable PEM public key: {error}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SigningError(f"--public-key {str(path)!r} is a {type(key).__name__}; expected an Ed25519 key")
    return key


def public_key_of(private_key):
    return private_key.public_key()


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def sign_file(private_key, path: Path) -> None:
    """Write ``<path>.sig``: the signature of ``path``'s bytes."""
    from verifier.certificate.store import atomic_write_bytes

    signature = private_key.sign(path.read_bytes())
    atomic_write_bytes(signature_path(path), base64.b64encode(signature) + b"\n")


def signature_holds(public_key, path: Path) -> tuple[bool, str]:
    """(valid, what was found) for ``path``'s signature under ``public_key``."""
    _, _, invalid_signature = _crypto()
    signature_file = signature_path(path)
    if not signature_file.is_file():
        return False, f"{signature_file.name} is missing"
    try:
        public_key.verify(base64.b64decode(signature_file.read_bytes().strip(), validate=True), path.read_bytes())
    except (invalid_signature, ValueError):
        return False, f"{signature_file.name} does not sign the file's bytes under this public key"
    return True, f"{signature_file.name} is a valid Ed25519 signature"
