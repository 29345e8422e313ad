"""``dpsd certificate``: register, verify by proof of possession, list, show, delete."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.certs import issue
from tests.e2e.process import run_dpsd

pytestmark = pytest.mark.e2e


def test_certificate_lifecycle(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    root = issue("contoso-root", ca=True)
    (tmp_path / "root.pem").write_text(root.pem)
    (tmp_path / "root.der").write_bytes(root.der)

    added = run_dpsd(
        "certificate", "add", "contoso", "--file", str(tmp_path / "root.pem"), "--json", *data
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["isVerified"] is False
    again = run_dpsd("certificate", "add", "CONTOSO", "--file", str(tmp_path / "root.der"), *data)
    assert again.returncode == 1
    assert "already exists" in again.stderr

    code = json.loads(
        run_dpsd("certificate", "verification-code", "contoso", "-o", "json", *data).stdout
    )
    verification_code = code["verificationCode"]
    impostor = issue(verification_code)  # self-signed: not signed by the CA's key
    (tmp_path / "impostor.pem").write_text(impostor.pem)
    refused = run_dpsd(
        "certificate", "verify", "contoso", "--file", str(tmp_path / "impostor.pem"), *data
    )
    assert refused.returncode == 1
    assert "not signed by this CA certificate's private key" in refused.stderr

    proof = issue(verification_code, root)
    (tmp_path / "proof.pem").write_text(proof.pem)
    verified = run_dpsd(
        "certificate", "verify", "contoso", "--file", str(tmp_path / "proof.pem"), "--json", *data
    )
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["isVerified"] is True

    listed = json.loads(run_dpsd("certificate", "list", "--json", *data).stdout)
    assert [entry["name"] for entry in listed] == ["contoso"]
    assert listed[0]["subject"] == "CN=contoso-root, O=Contoso, C=US"
    assert json.loads(run_dpsd("certificate", "list", "-o", "json", *data).stdout) == listed
    table = run_dpsd("certificate", "list", *data).stdout
    assert re.search(r"^name +verified +subject +SHA-256 thumbprint +expires$", table, re.M)
    assert re.search(
        rf"^contoso +yes +CN=contoso-root, O=Contoso, C=US +{listed[0]['thumbprint']} ", table, re.M
    ), table
    shown = run_dpsd("certificate", "show", "contoso", *data).stdout
    assert re.search(r"^verified +yes$", shown, re.M), shown
    assert re.search(rf"^SHA-1 thumbprint +{listed[0]['sha1Thumbprint']}$", shown, re.M), shown
    assert (
        json.loads(run_dpsd("certificate", "show", "contoso", "-o", "json", *data).stdout)
        == listed[0]
    )

    assert run_dpsd("certificate", "delete", "contoso", *data).returncode == 0
    missing = run_dpsd("certificate", "show", "contoso", *data)
    assert missing.returncode == 1
    assert "not found" in missing.stderr
