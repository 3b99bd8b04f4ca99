"""The server's key-encryption key (KEK): how content keys rest on the server.

A release manager seals the release's content key to the KEK's public key
(``GET /api/v1/kek``) as an ordinary edgeseal HPKE envelope, bound to the
sealed model's header. The server stores only that envelope. When it must
produce device envelopes it opens the KEK envelope in memory
(:func:`edgeseal.sdk.envelope.open_envelope` with a
:class:`~edgeseal.sdk.envelope.SoftwareRecipient`), re-seals to each device,
and drops the key. At scale this class is where a KMS plugs in.

The private key is a P-256 PKCS#8 PEM file, mode 0600, in ``DIR/keys``
(0700). It is not passphrase-encrypted: the server must use it unattended;
the file permissions and the host are its protection.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgeseal.ota_server.service_errors import ConfigError
from edgeseal.sdk.envelope import SoftwareRecipient, open_envelope, seal_envelope
from edgeseal.sdk.hazmat.format import SealedModelHeader
from edgeseal.sdk.hazmat.keys import ContentKey

KEK_FILE = "kek.pem"
MAX_KEY_FILE = 16 * 1024


class KeyEncryptionKey:
    """The KEK, loaded. ``repr`` never shows the key."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        self._recipient = SoftwareRecipient(private_key)
        self._public = private_key.public_key()

    @classmethod
    def generate(cls, keys_dir: Path) -> KeyEncryptionKey:
        """Create ``keys_dir/kek.pem`` (refusing to overwrite one)."""
        private_key = ec.generate_private_key(ec.SECP256R1())
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = keys_dir / KEK_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return cls(private_key)

    @classmethod
    def load(cls, keys_dir: Path) -> KeyEncryptionKey:
        path = keys_dir / KEK_FILE
        try:
            mode = path.stat().st_mode
            with path.open("rb") as handle:
                pem = handle.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read the server KEK {path}: {exc.strerror}") from None
        if stat.S_IMODE(mode) & 0o077:
            raise ConfigError(f"the server KEK {path} is readable by others: chmod 600 it")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except ValueError:
            raise ConfigError(f"the server KEK {path} is not a PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ConfigError(f"the server KEK {path} is not a P-256 key")
        return cls(key)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def public_key_pem(self) -> str:
        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")

    def open(self, kek_envelope: bytes, header: SealedModelHeader) -> ContentKey:
        """The content key inside a KEK envelope (raises ``EnvelopeError`` if it does not open)."""
        return open_envelope(kek_envelope, self._recipient, header)

    def reseal(
        self,
        kek_envelope: bytes,
        header: SealedModelHeader,
        recipients: list[ec.EllipticCurvePublicKey],
    ) -> list[bytes]:
        """Device envelopes for ``recipients``, from the content key in ``kek_envelope``."""
        content_key = self.open(kek_envelope, header)
        return [seal_envelope(content_key, pk, header) for pk in recipients]

    def __repr__(self) -> str:
        return "KeyEncryptionKey(<private key>)"
