"""The two kinds of failure a pipeline step can have, as Pub/Sub delivery semantics need them.

A PermanentError will fail again on every retry (bad input, a duplicate request, an unknown key): the
message goes to the dead-letter topic with the error's text as its reason, and is acknowledged.
A TransientError may succeed later (storage or KMS unavailable): the delivery fails so Pub/Sub retries.
Error texts are reasons that end up in dead-letter messages and logs: they never carry keys, URLs or model bytes.
"""


class PermanentError(Exception):
    """Retrying cannot help; the message is dead-lettered with this error's text as the reason."""


class InvalidEvent(PermanentError):
    """An event failed validation; `field` names the offending field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"invalid event: field '{field}': {problem}")
        self.field = field
        self.problem = problem


class DuplicateRequest(PermanentError):
    """The (user_id, request_id) pair was already turned into a model."""


class StagedObjectInvalid(PermanentError):
    """A staged object is not a staging envelope, or fails authentication under its name."""


class UnwrapFailed(PermanentError):
    """A wrapped data key does not open under this KMS key and context."""


class ObjectMissing(PermanentError):
    """An object an event refers to does not exist (already consumed or expired)."""


class RequestLimitExceeded(PermanentError):
    """The user already has as many models as the per-user limit allows within its period."""


class UserDeleted(PermanentError):
    """The user was deleted: nothing more is made or published for them."""


class KeyUnavailable(PermanentError):
    """A KMS key or key version does not exist here, is disabled or destroyed, or may not be used by this account."""


class TransientError(Exception):
    """A dependency is unavailable; the delivery fails so that it is retried."""
