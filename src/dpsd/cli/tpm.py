"""Enrolling a TPM device from what its SDK tells about it: the C SDK's
``tpm_device_provision`` prints the device's registration id and endorsement key, and the C
and Node SDKs derive the registration id from the endorsement key when the application gives
none (``dpsd.domain.tpm_public.registration_id_of``)."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from dpsd.cli.failures import USAGE, fail
from dpsd.domain.tpm_public import registration_id_of

_ID_HEADING = "registration id:"
_KEY_HEADING = "endorsement key:"


def read_provision_output(text: str) -> tuple[str, str]:
    """The registration id and endorsement key ``tpm_device_provision`` printed, each on the
    line after its heading; ValueError when either is missing."""
    lines = [line.strip() for line in text.splitlines()]
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        heading = line.lower()
        if heading in (_ID_HEADING, _KEY_HEADING):
            value = next((later for later in lines[index + 1 :] if later), "")
            found[heading] = value
    missing = [name for name in (_ID_HEADING, _KEY_HEADING) if not found.get(name)]
    if missing:
        raise ValueError(f"no {' and no '.join(name.rstrip(':') for name in missing)} in it")
    return found[_ID_HEADING], found[_KEY_HEADING]


def derived_registration_id(endorsement_key: str) -> str:
    try:
        raw = base64.b64decode(endorsement_key, validate=True)
    except (binascii.Error, ValueError):
        fail("--endorsement-key is not base64", USAGE)
    return registration_id_of(raw)


def tpm_identity(
    registration_id: str | None, endorsement_key: str | None, provision_output: Path | None
) -> tuple[str, str | None]:
    """The enrollment's registration id and endorsement key, from the command's argument and
    flags: the tool's output gives both (an explicit id wins), an endorsement key alone
    gives the id its SDK derives."""
    if provision_output is not None:
        try:
            printed_id, printed_key = read_provision_output(provision_output.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            fail(f"{provision_output} is not the output of tpm_device_provision: {error}", USAGE)
        if endorsement_key is not None and endorsement_key != printed_key:
            fail(f"--endorsement-key is not the endorsement key {provision_output} names", USAGE)
        registration_id, endorsement_key = registration_id or printed_id, printed_key
    if registration_id is None:
        if endorsement_key is None:
            fail("give a registration id, or a TPM endorsement key to derive it from", USAGE)
        registration_id = derived_registration_id(endorsement_key)
    return registration_id, endorsement_key
