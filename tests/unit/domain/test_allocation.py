"""Hub allocation: weighted, stable hashing; static; geoLatency by configured location."""

from __future__ import annotations

from collections import Counter

import pytest

from dpsd.domain.allocation import AllocationFailed, allocate, candidate_hubs, hashed
from dpsd.domain.attestation import AttestationMechanism, AttestationType
from dpsd.domain.device_auth import derive_device_key
from dpsd.domain.enrollment import AllocationPolicy, EnrollmentSettings
from dpsd.domain.hub import LinkedHub

SETTINGS = EnrollmentSettings(attestation=AttestationMechanism(AttestationType.SYMMETRIC_KEY))


def hub(
    name: str, weight: int = 1, *, applies: bool = True, location: str | None = None
) -> LinkedHub:
    return LinkedHub(name, "etag", weight, applies, location)


def test_the_derived_key_matches_the_documented_vector() -> None:
    group_key = (
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
    )
    device = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
    assert derive_device_key(group_key, device) == "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="


def test_a_single_hub_takes_every_device_whatever_its_weight() -> None:
    for only in (hub("a.example"), hub("b.example", weight=0)):
        assert {hashed([only], f"d-{n}").host_name for n in range(50)} == {only.host_name}


def test_hashing_is_stable_and_follows_weights() -> None:
    hubs = [hub("a.example", 1), hub("b.example", 3)]
    devices = [f"device-{n}" for n in range(4000)]
    first = [hashed(hubs, device).host_name for device in devices]
    assert first == [hashed(list(reversed(hubs)), device).host_name for device in devices]
    share = Counter(first)["b.example"] / len(devices)
    assert 0.70 < share < 0.80
    assert hashed(hubs, "Device-7").host_name == hashed(hubs, "device-7").host_name


def test_adding_a_hub_moves_only_the_devices_it_takes() -> None:
    before = [hub("a.example"), hub("b.example")]
    after = [*before, hub("c.example")]
    for n in range(500):
        chosen = hashed(after, f"d-{n}").host_name
        assert chosen in ("c.example", hashed(before, f"d-{n}").host_name)


def test_candidates_are_the_enrollments_hubs_or_every_hub_that_applies() -> None:
    linked = [hub("a.example"), hub("b.example", applies=False)]
    assert candidate_hubs(SETTINGS, linked) == [linked[0]]
    named = EnrollmentSettings(attestation=SETTINGS.attestation, iot_hubs=("B.EXAMPLE",))
    assert candidate_hubs(named, linked) == [linked[1]]
    legacy = EnrollmentSettings(attestation=SETTINGS.attestation, iot_hub_host_name="b.example")
    assert candidate_hubs(legacy, linked) == [linked[1]]
    with pytest.raises(AllocationFailed, match="no linked IoT hub"):
        candidate_hubs(SETTINGS, [linked[1]])
    gone = EnrollmentSettings(attestation=SETTINGS.attestation, iot_hubs=("z.example",))
    with pytest.raises(AllocationFailed, match=r"z\.example"):
        candidate_hubs(gone, linked)


def test_static_needs_exactly_one_hub() -> None:
    assert allocate(AllocationPolicy.STATIC, [hub("a.example")], "d", None).host_name == "a.example"
    with pytest.raises(AllocationFailed) as failure:
        allocate(AllocationPolicy.STATIC, [hub("a.example"), hub("b.example")], "d", None)
    assert failure.value.error_code == 400208


def test_geo_latency_prefers_the_services_location() -> None:
    hubs = [hub("west.example", location="west"), hub("east.example", location="East")]
    for n in range(50):
        assert (
            allocate(AllocationPolicy.GEO_LATENCY, hubs, f"d-{n}", "east").host_name
            == "east.example"
        )
        unplaced = allocate(AllocationPolicy.GEO_LATENCY, hubs, f"d-{n}", "north").host_name
        assert unplaced == hashed(hubs, f"d-{n}").host_name


def test_custom_is_not_decided_here() -> None:
    with pytest.raises(AllocationFailed, match="webhook"):
        allocate(AllocationPolicy.CUSTOM, [hub("a.example")], "d", None)
