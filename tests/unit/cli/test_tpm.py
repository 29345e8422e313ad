"""Reading what the C SDK's tpm_device_provision prints, and the registration id a TPM
device's SDK derives from its endorsement key."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
import typer

from dpsd.cli.tpm import read_provision_output, tpm_identity

EK = base64.b64encode(b"\x01\x3a" + bytes(range(200)) + bytes(114)).decode()
DERIVED = base64.b32encode(hashlib.sha256(base64.b64decode(EK)).digest()).decode()
DERIVED = DERIVED.rstrip("=").lower()
# What the tool prints, line ends and all (it ends waiting for a key).
PRINTED = (
    "Gathering the registration information...\r\n"
    f"\r\nRegistration Id:\r\n{DERIVED}\r\n"
    f"\r\nEndorsement Key:\r\n{EK}\r\n"
    "\r\nPress any key to continue:\r\n"
)


def test_the_tools_output_names_the_id_and_the_key() -> None:
    assert read_provision_output(PRINTED) == (DERIVED, EK)


@pytest.mark.parametrize(
    "text",
    ["", "Registration Id:\r\nabc\r\n", "Endorsement Key:\r\n\r\n", "Registration Id:\nx\n"],
)
def test_output_without_both_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="no "):
        read_provision_output(text)


def test_an_endorsement_key_alone_gives_the_id_the_sdks_derive() -> None:
    assert tpm_identity(None, EK, None) == (DERIVED, EK)
    assert tpm_identity("my-device", EK, None) == ("my-device", EK)
    assert tpm_identity("sym-1", None, None) == ("sym-1", None)


def test_the_tools_output_gives_both_and_an_explicit_id_wins(tmp_path: Path) -> None:
    printed = tmp_path / "device.txt"
    printed.write_text(PRINTED)
    assert tpm_identity(None, None, printed) == (DERIVED, EK)
    assert tpm_identity("gateway-7", None, printed) == ("gateway-7", EK)
    assert tpm_identity(None, EK, printed) == (DERIVED, EK)


@pytest.mark.parametrize(
    ("registration_id", "key", "output"),
    [(None, None, None), (None, "not base64!", None), (None, "b3RoZXI=", "printed")],
)
def test_what_cannot_name_the_device_is_a_usage_error(
    tmp_path: Path, registration_id: str | None, key: str | None, output: str | None
) -> None:
    printed = tmp_path / "device.txt"
    printed.write_text(PRINTED)
    with pytest.raises(typer.Exit) as raised:
        tpm_identity(registration_id, key, printed if output else None)
    assert raised.value.exit_code == 2
