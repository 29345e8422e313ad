"""Devices of a built-in IoT hub: ids, identities, etags, and writes into their twins."""

from __future__ import annotations

import base64
import itertools
import json
import string
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.errors import ValidationError
from dpsd.domain.hub_device import (
    GENERATED_KEY_BYTES,
    LAST_UPDATED,
    LAST_UPDATED_VERSION,
    MAX_DESIRED_BYTES,
    MAX_TAGS_BYTES,
    MAX_TWIN_DEPTH,
    NEVER,
    DeviceIdentity,
    DeviceStatus,
    HubAuthentication,
    HubAuthenticationType,
    HubDevice,
    HubSymmetricKey,
    TwinContent,
    X509Thumbprint,
    check_device_id,
    device_etag,
    device_scope,
    new_generation_id,
    new_hub_device,
    patch_twin,
    replace_twin,
    twin_etag,
    update_identity,
)
from tests.unit.support import FAST

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
NOW_TEXT = "2026-12-01T10:00:00.0000000Z"
LATER_TEXT = "2026-12-01T10:05:00.0000000Z"
KEY_A = base64.b64encode(b"a" * 32).decode()
KEY_B = base64.b64encode(b"b" * 32).decode()
SHA1 = "AB" * 20
SHA256 = "cd" * 32
ALLOWED = string.ascii_letters + string.digits + "-.+%_#*?!(),=@$':"


def counting_random() -> Callable[[int], bytes]:
    """Random bytes that differ on every call, the same on every run."""
    counter = itertools.count(1)

    def random_bytes(count: int) -> bytes:
        return next(counter).to_bytes(4, "big") * (count // 4) + bytes(count % 4)

    return random_bytes


def sas(primary: str | None = None, secondary: str | None = None) -> HubAuthentication:
    return HubAuthentication(HubAuthenticationType.SAS, HubSymmetricKey(primary, secondary))


def self_signed(primary: str | None = SHA1, secondary: str | None = SHA256) -> HubAuthentication:
    return HubAuthentication(
        HubAuthenticationType.SELF_SIGNED, x509_thumbprint=X509Thumbprint(primary, secondary)
    )


def identity(device_id: str = "dev-1", **changes: Any) -> DeviceIdentity:
    return replace(DeviceIdentity(device_id, sas(KEY_A, KEY_B)), **changes)


def device(**changes: Any) -> HubDevice:
    created = new_hub_device("hub.example", identity(), now=NOW, random_bytes=counting_random())
    return replace(created, **changes)


def twin(tags: dict[str, Any] | None = None, desired: dict[str, Any] | None = None) -> TwinContent:
    return TwinContent(tags=tags or {}, desired=desired or {})


# --- device ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("device_id", ["a", "Device-1", ALLOWED, "x" * 128, "urn:dev:1"])
def test_device_ids_iot_hub_accepts(device_id: str) -> None:
    assert check_device_id(device_id) == device_id


@pytest.mark.parametrize(
    ("device_id", "message"),
    [
        ("", "must not be empty"),
        ("x" * 129, "129 characters long; the limit is 128"),
        ("with space", "is invalid"),
        ("a/b", "is invalid"),
        ("caf\u00e9", "is invalid"),
        ("a&b", "is invalid"),
        ("tab\t", "is invalid"),
    ],
)
def test_device_ids_iot_hub_refuses(device_id: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_device_id(device_id)


@FAST
@given(st.text(alphabet=ALLOWED, min_size=1, max_size=128))
def test_any_id_of_the_allowed_characters_passes(device_id: str) -> None:
    assert check_device_id(device_id) == device_id


@FAST
@given(st.text(min_size=1, max_size=20), st.characters())
def test_an_id_with_another_character_fails(text: str, other: str) -> None:
    if other in ALLOWED:
        return
    with pytest.raises(ValidationError):
        check_device_id(text[:10] + other + text[10:])


# --- etags --------------------------------------------------------------------------------


def test_etags_look_like_iot_hubs() -> None:
    assert device_etag(device(device_version=885529833)) == "ODg1NTI5ODMz"
    assert twin_etag(device(twin_version=7)) == "AAAAAAAAAAc="


@FAST
@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_etags_decode_to_their_versions(version: int) -> None:
    moved = device(device_version=version, twin_version=version)
    assert int(base64.b64decode(device_etag(moved))) == version
    assert int.from_bytes(base64.b64decode(twin_etag(moved)), "big") == version


# --- new devices --------------------------------------------------------------------------


def test_a_new_device_starts_at_version_one_with_an_empty_twin() -> None:
    created = device()
    assert (created.device_version, created.twin_version) == (1, 1)
    assert created.hub == "hub.example"
    assert created.status_updated == NEVER
    assert created.tags == {}
    for properties in (created.desired, created.reported):
        assert properties.values == {}
        assert properties.version == 1
        assert properties.metadata == {LAST_UPDATED: NOW_TEXT}
    assert len(created.generation_id) == 18
    assert created.identity == identity()


@pytest.mark.parametrize("keys", [None, HubSymmetricKey(), HubSymmetricKey("", "")])
def test_a_sas_device_without_keys_gets_generated_ones(keys: HubSymmetricKey | None) -> None:
    given_identity = identity(authentication=HubAuthentication(HubAuthenticationType.SAS, keys))
    created = new_hub_device("h", given_identity, now=NOW, random_bytes=counting_random())
    generated = created.identity.authentication.symmetric_key
    assert generated is not None
    assert generated.primary_key is not None
    assert generated.secondary_key is not None
    assert len(base64.b64decode(generated.primary_key)) == GENERATED_KEY_BYTES
    assert len(base64.b64decode(generated.secondary_key)) == GENERATED_KEY_BYTES
    assert generated.primary_key != generated.secondary_key


@pytest.mark.parametrize(
    ("authentication", "message"),
    [
        (sas(KEY_A, None), "both symmetricKey.primaryKey and secondaryKey, or neither"),
        (sas("", KEY_B), "both symmetricKey.primaryKey and secondaryKey, or neither"),
        (sas("not base64!", KEY_B), "not valid base64"),
        (sas(base64.b64encode(b"short").decode(), KEY_B), "5 bytes long"),
        (self_signed(primary=None), "needs x509Thumbprint.primaryThumbprint"),
        (self_signed(secondary=None), "needs x509Thumbprint.secondaryThumbprint"),
        (self_signed(primary="AB" * 19), "40 \\(SHA-1\\) or 64 \\(SHA-256\\) hex digits"),
        (self_signed(secondary="zz" * 32), "hex digits"),
        (HubAuthentication(HubAuthenticationType.SELF_SIGNED), "needs x509Thumbprint"),
    ],
)
def test_credentials_that_do_not_fit_their_type_are_refused(
    authentication: HubAuthentication, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        new_hub_device(
            "h", identity(authentication=authentication), now=NOW, random_bytes=counting_random()
        )


def test_only_the_credential_of_the_type_is_kept() -> None:
    mixed = HubAuthentication(
        HubAuthenticationType.SAS, HubSymmetricKey(KEY_A, KEY_B), X509Thumbprint(SHA1, SHA1)
    )
    created = new_hub_device("h", identity(authentication=mixed), now=NOW, random_bytes=bytes)
    assert created.identity.authentication == sas(KEY_A, KEY_B)
    thumbprints = replace(self_signed(), symmetric_key=HubSymmetricKey(KEY_A, KEY_B))
    created = new_hub_device("h", identity(authentication=thumbprints), now=NOW, random_bytes=bytes)
    assert created.identity.authentication == self_signed()
    authority = replace(mixed, type=HubAuthenticationType.CERTIFICATE_AUTHORITY)
    created = new_hub_device("h", identity(authentication=authority), now=NOW, random_bytes=bytes)
    assert created.identity.authentication == HubAuthentication(
        HubAuthenticationType.CERTIFICATE_AUTHORITY
    )


def test_a_long_status_reason_is_refused() -> None:
    with pytest.raises(ValidationError, match="statusReason is 129 characters long"):
        new_hub_device("h", identity(status_reason="r" * 129), now=NOW, random_bytes=bytes)


@FAST
@given(st.binary(min_size=8, max_size=8))
def test_generation_ids_are_eighteen_digits(random8: bytes) -> None:
    generation = new_generation_id(random8)
    assert len(generation) == 18
    assert generation.isdigit()
    assert generation[0] != "0"


def test_a_generation_id_takes_eight_bytes() -> None:
    with pytest.raises(ValueError, match="eight random bytes"):
        new_generation_id(b"1234567")


def test_only_edge_devices_have_a_device_scope() -> None:
    assert device_scope(device()) is None
    edge = device(identity=identity(iot_edge=True), generation_id="637093398936580016")
    assert device_scope(edge) == "ms-azure-iot-edge://dev-1-637093398936580016"


# --- identity updates ---------------------------------------------------------------------


def test_an_identity_update_keeps_the_twin_and_moves_both_versions() -> None:
    stored = patch_twin(device(), twin({"site": "north"}, {"rate": 5}), now=NOW)
    updated = update_identity(
        stored, identity(iot_edge=True), now=LATER, random_bytes=counting_random()
    )
    assert updated.identity.iot_edge
    assert updated.device_version == stored.device_version + 1
    assert updated.twin_version == stored.twin_version + 1
    assert (updated.tags, updated.desired, updated.reported) == (
        stored.tags,
        stored.desired,
        stored.reported,
    )
    assert updated.generation_id == stored.generation_id
    assert updated.status_updated == stored.status_updated


def test_a_status_change_is_timed() -> None:
    disabled = identity(status=DeviceStatus.DISABLED, status_reason="stolen")
    updated = update_identity(device(), disabled, now=LATER, random_bytes=bytes)
    assert updated.status_updated == LATER
    again = update_identity(updated, disabled, now=LATER + timedelta(hours=1), random_bytes=bytes)
    assert again.status_updated == LATER


def test_an_update_without_keys_keeps_the_stored_sas_keys() -> None:
    updated = update_identity(
        device(), identity(authentication=sas()), now=LATER, random_bytes=bytes
    )
    assert updated.identity.authentication == sas(KEY_A, KEY_B)


def test_an_update_to_sas_without_keys_generates_them() -> None:
    stored = device(identity=identity(authentication=self_signed()))
    updated = update_identity(
        stored, identity(authentication=sas()), now=LATER, random_bytes=counting_random()
    )
    keys = updated.identity.authentication.symmetric_key
    assert keys is not None
    assert keys.primary_key
    assert keys.primary_key not in (KEY_A, KEY_B)


# --- twin writes --------------------------------------------------------------------------


def test_a_patch_merges_objects_and_removes_nulls() -> None:
    stored = replace_twin(
        device(),
        twin(
            {"site": {"building": "b1", "floor": 3}, "owner": "ops"},
            {"rate": 5, "mode": {"a": 1, "b": [1, 2]}},
        ),
        now=NOW,
    )
    patched = patch_twin(
        stored,
        twin(
            {"site": {"floor": None, "room": "12"}, "owner": {"team": "x"}},
            {"rate": None, "mode": {"b": [3]}, "new": "yes"},
        ),
        now=LATER,
    )
    assert patched.tags == {"site": {"building": "b1", "room": "12"}, "owner": {"team": "x"}}
    assert patched.desired.values == {"mode": {"a": 1, "b": [3]}, "new": "yes"}
    assert patched.desired.version == stored.desired.version + 1
    assert patched.twin_version == stored.twin_version + 1
    assert patched.device_version == stored.device_version


def test_metadata_stamps_what_a_patch_touched() -> None:
    stored = replace_twin(device(), twin(desired={"rate": 5, "mode": {"a": 1, "c": 2}}), now=NOW)
    assert stored.desired.version == 2
    first = {LAST_UPDATED: NOW_TEXT, LAST_UPDATED_VERSION: 2}
    assert stored.desired.metadata == {
        **first,
        "rate": first,
        "mode": {**first, "a": first, "c": first},
    }
    patched = patch_twin(stored, twin(desired={"mode": {"a": 7, "c": None}}), now=LATER)
    second = {LAST_UPDATED: LATER_TEXT, LAST_UPDATED_VERSION: 3}
    assert patched.desired.metadata == {**second, "rate": first, "mode": {**second, "a": second}}


def test_a_patch_that_changes_no_desired_property_keeps_their_version() -> None:
    stored = replace_twin(device(), twin(desired={"rate": 5}), now=NOW)
    for patch in (twin(tags={"site": "x"}), twin(desired={"rate": 5}), twin(desired={"x": None})):
        patched = patch_twin(stored, patch, now=LATER)
        assert patched.desired == stored.desired
        assert patched.twin_version == stored.twin_version + 1


def test_a_replacement_sets_tags_and_desired_properties_as_a_whole() -> None:
    stored = replace_twin(device(), twin({"a": 1, "b": 2}, {"x": {"y": 1}}), now=NOW)
    replaced = replace_twin(stored, twin({"c": 3, "d": None}, {"x": {"z": 2}}), now=LATER)
    assert replaced.tags == {"c": 3}
    assert replaced.desired.values == {"x": {"z": 2}}
    stamp = {LAST_UPDATED: LATER_TEXT, LAST_UPDATED_VERSION: 3}
    assert replaced.desired.metadata == {**stamp, "x": {**stamp, "z": stamp}}


def test_the_read_only_keys_a_client_echoes_are_ignored() -> None:
    echoed = {"rate": 5, "$version": 9, "$metadata": {LAST_UPDATED: "x"}}
    patched = patch_twin(device(), twin(desired=echoed), now=NOW)
    assert patched.desired.values == {"rate": 5}
    assert patched.desired.version == 2
    assert replace_twin(device(), twin(desired=echoed), now=NOW).desired.values == {"rate": 5}


def test_reported_properties_are_never_written() -> None:
    patched = patch_twin(device(), twin({"a": 1}, {"b": 2}), now=LATER)
    assert patched.reported == device().reported


def nested(levels: int, leaf: Any = "value") -> dict[str, Any]:
    """``levels`` objects, one inside the other, the innermost holding ``leaf``."""
    value: dict[str, Any] = {"property": leaf}
    for level in range(levels - 1):
        value = {f"level{level}": value}
    return value


def test_objects_nest_up_to_ten_levels() -> None:
    deepest = {"one": nested(MAX_TWIN_DEPTH)}
    assert patch_twin(device(), twin(deepest, deepest), now=NOW).tags == deepest
    too_deep = {"one": nested(MAX_TWIN_DEPTH + 1)}
    for content in (twin(tags=too_deep), twin(desired=too_deep)):
        with pytest.raises(ValidationError, match="more than 10 levels deep"):
            patch_twin(device(), content, now=NOW)
    with pytest.raises(ValidationError, match="more than 10 levels deep"):
        replace_twin(device(), twin(tags={"one": nested(MAX_TWIN_DEPTH, leaf=[1])}), now=NOW)


@pytest.mark.parametrize(
    "key", ["a.b", "$a", "a b", "", "tab\t", "bell\x07", "c1\x85", "del\x7f", "k" * 1025]
)
def test_key_names_iot_hub_refuses(key: str) -> None:
    for content in (twin(tags={key: 1}), twin(desired={"outer": {key: None}})):
        with pytest.raises(ValidationError, match="key name"):
            patch_twin(device(), content, now=NOW)


def test_key_names_may_hold_other_characters() -> None:
    odd = {"caf\u00e9": 1, "a-b_c:d#e": 2, "\u4e2d": 3, "k" * 1024: 4}
    assert patch_twin(device(), twin(tags=odd), now=NOW).tags == odd


def sized(total: int) -> dict[str, str]:
    """An object whose JSON text is exactly ``total`` bytes long."""
    return {"k": "x" * (total - len(json.dumps({"k": ""}, separators=(",", ":"))))}


def test_tags_and_desired_properties_have_size_limits() -> None:
    assert patch_twin(device(), twin(tags=sized(MAX_TAGS_BYTES)), now=NOW).tags
    with pytest.raises(ValidationError, match="tags take 8193 bytes as JSON; the limit is 8192"):
        patch_twin(device(), twin(tags=sized(MAX_TAGS_BYTES + 1)), now=NOW)
    assert patch_twin(device(), twin(desired=sized(MAX_DESIRED_BYTES)), now=NOW).desired.values
    with pytest.raises(ValidationError, match=r"properties\.desired take 32769 bytes"):
        replace_twin(device(), twin(desired=sized(MAX_DESIRED_BYTES + 1)), now=NOW)


def test_the_size_limit_counts_what_the_merge_leaves() -> None:
    half = MAX_TAGS_BYTES // 2
    stored = patch_twin(device(), twin(tags={"a": "x" * half}), now=NOW)
    with pytest.raises(ValidationError, match="tags take"):
        patch_twin(stored, twin(tags={"b": "y" * half}), now=NOW)
    assert patch_twin(stored, twin(tags={"a": None, "b": "y" * half}), now=NOW).tags


def test_values_json_cannot_hold_are_refused() -> None:
    with pytest.raises(ValidationError, match="which JSON cannot hold"):
        patch_twin(device(), twin(tags={"a": {1, 2}}), now=NOW)


# --- properties of merging ----------------------------------------------------------------

KEYS = st.text(alphabet="abcd", min_size=1, max_size=2)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: st.dictionaries(KEYS, children, max_size=3) | st.lists(children, max_size=2),
    max_leaves=12,
)
OBJECTS = st.dictionaries(KEYS, JSON_VALUES, max_size=4)


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: without_nulls(child) for key, child in value.items() if child is not None}
    return value


def merged_expectation(target: Any, patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch, spelt out the slow way."""
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merged_expectation(result.get(key), value)
        else:
            result[key] = value
    return result


def assert_metadata_mirrors(values: dict[str, Any], metadata: dict[str, Any]) -> None:
    assert LAST_UPDATED in metadata
    assert {key for key in metadata if not key.startswith("$")} == set(values)
    for key, value in values.items():
        if isinstance(value, dict):
            assert_metadata_mirrors(value, metadata[key])
        else:
            assert set(metadata[key]) == {LAST_UPDATED, LAST_UPDATED_VERSION}


@FAST
@given(OBJECTS, OBJECTS, OBJECTS)
def test_a_patch_merges_like_a_json_merge_patch(
    first: dict[str, Any], second: dict[str, Any], tags: dict[str, Any]
) -> None:
    stored = replace_twin(device(), twin(tags, first), now=NOW)
    assert stored.desired.values == without_nulls(first)
    patched = patch_twin(stored, twin(second, second), now=LATER)
    assert patched.desired.values == merged_expectation(without_nulls(first), second)
    assert patched.tags == merged_expectation(without_nulls(tags), second)
    changed = patched.desired.values != stored.desired.values
    assert patched.desired.version == stored.desired.version + changed
    assert_metadata_mirrors(patched.desired.values, patched.desired.metadata)
    again = patch_twin(patched, twin(second, second), now=LATER)
    assert (again.tags, again.desired) == (patched.tags, patched.desired)
