"""An Ed25519 key pair written as PEM files, for the signing tests."""

from __future__ import annotations

from pathlib import Path


def write_keypair(folder: Path) -> tuple[Path, Path]:
    """(private key, public key) PEM files in ``folder``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = folder / "key.pem"
    public = folder / "key.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
