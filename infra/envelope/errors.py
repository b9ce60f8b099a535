"""Every way an envelope or a device key can fail: one class each, named in docs/envelope.md and the negative
test vectors. They know nothing of their callers: the pipeline decides what a failure means for a message."""
from __future__ import annotations


class EnvelopeError(Exception):
    """A sealed IML, or a key meant for one, was refused."""


class InvalidDeviceKey(EnvelopeError):
    """The device key is not a usable P-256, X25519 or X-Wing key."""


class BadMagic(EnvelopeError):
    """Not a sealed IML."""


class UnsupportedVersion(EnvelopeError):
    """A format version this reader does not know."""


class MalformedHeader(EnvelopeError):
    """The header is not the JSON object the format requires."""


class LimitExceeded(EnvelopeError):
    """A declared length or size is outside the format's limits."""


class Truncated(EnvelopeError):
    """The envelope ends before what its header declares."""


class TrailingData(EnvelopeError):
    """Bytes follow the final chunk."""


class SuiteMismatch(EnvelopeError):
    """The envelope was sealed for another kind of key than the one opening it."""


class WrongRecipient(EnvelopeError):
    """The data key does not unseal: another device's key, or a changed header or key block."""


class ChunkAuthenticationFailed(EnvelopeError):
    """A chunk was changed, moved, or taken from another envelope."""


class DigestMismatch(EnvelopeError):
    """The plaintext does not have the digest the header declares."""


class WrongUser(EnvelopeError):
    """The envelope was issued to another user than expected."""


class WrongModel(EnvelopeError):
    """The envelope holds another model than expected."""
