"""The broker's exception tree.

Every verification failure names the check that failed (`check`, a stable label the
server maps to protocol errors and metrics) and says what it saw and what it wanted
(the message, written for operators).  Key material never goes into a message.
"""


class KbsError(Exception):
    """Base of every error the broker raises on purpose."""

    check = "error"

    def __init__(self, message: str, *, check: str | None = None) -> None:
        super().__init__(message)
        if check is not None:
            self.check = check


class EvidenceError(KbsError):
    """The evidence was not accepted; no key may be released."""

    check = "evidence"


class MalformedEvidence(EvidenceError):
    """The bytes do not have the format they claim."""

    check = "malformed"


class SignatureInvalid(EvidenceError):
    """A signature over evidence did not verify."""

    check = "signature"


class ChainInvalid(EvidenceError):
    """A certificate chain, its pins, validity or the values bound to it are wrong."""

    check = "chain"


class CollateralUnavailable(EvidenceError):
    """Certificates or other collateral needed to verify could not be obtained."""

    check = "collateral"


class UsageError(KbsError):
    """The caller asked for something that cannot be done as asked."""

    check = "usage"
