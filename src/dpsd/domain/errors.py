"""Errors raised by the domain.

DomainError
├── ValidationError           input that breaks a DPS rule
│   ├── InvalidRegistrationId
│   ├── InvalidAttestation
│   ├── InvalidCertificate
│   └── InvalidQuery
└── InvalidToken              a SharedAccessSignature that cannot be parsed
"""

from __future__ import annotations


class DomainError(Exception):
    """Root of every error the domain raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(DomainError):
    """A value breaks a rule of the DPS API."""


class InvalidRegistrationId(ValidationError):
    """A registration id or enrollment group id is not well formed."""


class InvalidAttestation(ValidationError):
    """An attestation mechanism is inconsistent or malformed."""


class InvalidCertificate(InvalidAttestation):
    """A certificate cannot be parsed as X.509."""


class InvalidQuery(ValidationError):
    """A query specification cannot be understood."""


class InvalidToken(DomainError):
    """A SharedAccessSignature token is malformed."""
