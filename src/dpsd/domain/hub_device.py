"""Devices in an IoT hub's identity registry, and their twins.

What dpsd writes into the hub a device is assigned to (an identity and an initial twin), in
the IoT hub's own vocabulary, and what a hub that dpsd serves itself stores per device;
then the rules of such a hub: which device ids it takes, how a device's identity is
completed (generated keys, checked thumbprints), its etags, and how service clients write
its twin (merge or replace, ``$version`` and ``$metadata``, size and shape limits).
"""

from __future__ import annotations

import base64
import enum
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from dpsd.domain.attestation import decode_symmetric_key
from dpsd.domain.errors import ValidationError
from dpsd.domain.timestamps import format_timestamp

JsonObject = dict[str, Any]


class HubAuthenticationType(enum.StrEnum):
    SAS = "sas"
    SELF_SIGNED = "selfSigned"
    CERTIFICATE_AUTHORITY = "certificateAuthority"
    NONE = "none"


class DeviceStatus(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class HubSymmetricKey:
    primary_key: str | None = None
    secondary_key: str | None = None


@dataclass(frozen=True, slots=True)
class X509Thumbprint:
    """Hex digests of the device's certificates (SHA-1: 40 characters, SHA-256: 64)."""

    primary_thumbprint: str | None = None
    secondary_thumbprint: str | None = None


@dataclass(frozen=True, slots=True)
class HubAuthentication:
    type: HubAuthenticationType
    symmetric_key: HubSymmetricKey | None = None
    x509_thumbprint: X509Thumbprint | None = None


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A device as a client writes it into a hub (the body of ``PUT /devices/{id}``)."""

    device_id: str
    authentication: HubAuthentication
    status: DeviceStatus = DeviceStatus.ENABLED
    status_reason: str | None = None
    iot_edge: bool = False


@dataclass(frozen=True, slots=True)
class TwinContent:
    """What a service client writes into a twin: tags and desired properties, without
    ``$version`` or ``$metadata``."""

    tags: JsonObject = field(default_factory=dict)
    desired: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TwinProperties:
    """Desired or reported properties: the values, their version (``$version``), and the
    ``$metadata`` tree (``$lastUpdated`` per object and leaf)."""

    values: JsonObject = field(default_factory=dict)
    version: int = 1
    metadata: JsonObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HubDevice:
    """A device of a built-in hub as stored: its identity, its twin and the hub's own fields.

    ``device_version`` and ``twin_version`` count the writes of each; the etags the wire
    shows are made from them, as IoT Hub's are. ``generation_id`` changes only when the
    device is deleted and created again."""

    hub: str
    identity: DeviceIdentity
    generation_id: str
    device_version: int
    twin_version: int
    status_updated: datetime
    tags: JsonObject = field(default_factory=dict)
    desired: TwinProperties = field(default_factory=TwinProperties)
    reported: TwinProperties = field(default_factory=TwinProperties)

    @property
    def device_id(self) -> str:
        return self.identity.device_id


RandomBytes = Callable[[int], bytes]
"""Where new keys and generation ids come from: ``random_bytes(n)`` gives n random bytes."""

MAX_DEVICE_ID_LENGTH = 128
MAX_STATUS_REASON_LENGTH = 128
GENERATED_KEY_BYTES = 32
GENERATION_ID_DIGITS = 18
NEVER = datetime(1, 1, 1, tzinfo=UTC)
"""What IoT Hub shows for a moment that has not happened yet (``0001-01-01T00:00:00Z``)."""

MAX_TAGS_BYTES = 8 * 1024
MAX_DESIRED_BYTES = 32 * 1024
MAX_TWIN_DEPTH = 10
"""Objects (or arrays) may nest this many levels below ``tags`` or ``properties.desired``."""
MAX_TWIN_KEY_BYTES = 1024
LAST_UPDATED = "$lastUpdated"
LAST_UPDATED_VERSION = "$lastUpdatedVersion"
# What a client echoes back from a twin it read; IoT Hub writes these itself.
_READ_ONLY_DESIRED_KEYS = frozenset({"$version", "$metadata"})

_DEVICE_ID = re.compile(r"[A-Za-z0-9\-.+%_#*?!(),=@$':]+")
_DEVICE_ID_CHARACTERS = "ASCII letters, digits and - . + % _ # * ? ! ( ) , = @ $ ' :"
_THUMBPRINT = re.compile(r"[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64}")
# '.', '$', space, and the control characters (Unicode category Cc: C0, DEL and C1).
_FORBIDDEN_IN_KEYS = re.compile(r"[.$ \x00-\x1f\x7f-\x9f]")
_JSON_SCALARS = (str, int, float, type(None))
# A twin's size is that of its compact JSON, as IoT Hub counts it.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


# --- identities -------------------------------------------------------------------------


def check_device_id(device_id: str) -> str:
    """``device_id`` if IoT Hub accepts it as a device id, else ValidationError."""
    if not device_id:
        raise ValidationError("deviceId must not be empty")
    if len(device_id) > MAX_DEVICE_ID_LENGTH:
        raise ValidationError(
            f"deviceId is {len(device_id)} characters long; the limit is {MAX_DEVICE_ID_LENGTH}"
        )
    if not _DEVICE_ID.fullmatch(device_id):
        raise ValidationError(f"deviceId {device_id!r} is invalid: use {_DEVICE_ID_CHARACTERS}")
    return device_id


def complete_identity(
    identity: DeviceIdentity, stored: DeviceIdentity | None, random_bytes: RandomBytes
) -> DeviceIdentity:
    """The identity to store for ``identity`` as a client wrote it, over ``stored`` (None
    for a new device): checked, with symmetric keys generated where a ``sas`` device sent
    none and had none, and only the credential its authentication type uses."""
    check_device_id(identity.device_id)
    reason = identity.status_reason
    if reason is not None and len(reason) > MAX_STATUS_REASON_LENGTH:
        raise ValidationError(
            f"statusReason is {len(reason)} characters long; the limit is "
            f"{MAX_STATUS_REASON_LENGTH}"
        )
    authentication = _complete_authentication(
        identity.authentication, stored.authentication if stored else None, random_bytes
    )
    return replace(identity, authentication=authentication)


def _complete_authentication(
    given: HubAuthentication, stored: HubAuthentication | None, random_bytes: RandomBytes
) -> HubAuthentication:
    match given.type:
        case HubAuthenticationType.SAS:
            kept = stored.symmetric_key if stored and stored.type is given.type else None
            keys = _complete_keys(given.symmetric_key, kept, random_bytes)
            return HubAuthentication(given.type, symmetric_key=keys)
        case HubAuthenticationType.SELF_SIGNED:
            thumbprints = _check_thumbprints(given.x509_thumbprint)
            return HubAuthentication(given.type, x509_thumbprint=thumbprints)
        case _:
            return HubAuthentication(given.type)


def _complete_keys(
    given: HubSymmetricKey | None, kept: HubSymmetricKey | None, random_bytes: RandomBytes
) -> HubSymmetricKey:
    primary = given.primary_key if given else None
    secondary = given.secondary_key if given else None
    if primary and secondary:
        decode_symmetric_key(primary, which="primaryKey")
        decode_symmetric_key(secondary, which="secondaryKey")
        return HubSymmetricKey(primary, secondary)
    if primary or secondary:
        raise ValidationError(
            "a 'sas' device takes both symmetricKey.primaryKey and secondaryKey, or neither "
            "(then the hub generates them)"
        )
    if kept is not None and kept.primary_key and kept.secondary_key:
        return kept
    return HubSymmetricKey(_new_key(random_bytes), _new_key(random_bytes))


def _new_key(random_bytes: RandomBytes) -> str:
    return base64.b64encode(random_bytes(GENERATED_KEY_BYTES)).decode("ascii")


def _check_thumbprints(thumbprints: X509Thumbprint | None) -> X509Thumbprint:
    primary = thumbprints.primary_thumbprint if thumbprints else None
    secondary = thumbprints.secondary_thumbprint if thumbprints else None
    for name, value in (("primaryThumbprint", primary), ("secondaryThumbprint", secondary)):
        if value is None or not _THUMBPRINT.fullmatch(value):
            raise ValidationError(
                f"a 'selfSigned' device needs x509Thumbprint.{name}: 40 (SHA-1) or 64 "
                f"(SHA-256) hex digits, not {value!r}"
            )
    return X509Thumbprint(primary, secondary)


def new_generation_id(random8: bytes) -> str:
    """Eighteen decimal digits, the first not zero (IoT Hub's look like ``637093398936580016``)."""
    if len(random8) != 8:
        raise ValueError("a generation id takes exactly eight random bytes")
    first = 10 ** (GENERATION_ID_DIGITS - 1)
    return str(first + int.from_bytes(random8, "big") % (9 * first))


def new_hub_device(
    hub: str, identity: DeviceIdentity, *, now: datetime, random_bytes: RandomBytes
) -> HubDevice:
    """A device created by ``PUT /devices/{id}``: its identity completed, an empty twin."""
    created = format_timestamp(now)
    return HubDevice(
        hub=hub,
        identity=complete_identity(identity, None, random_bytes),
        generation_id=new_generation_id(random_bytes(8)),
        device_version=1,
        twin_version=1,
        status_updated=NEVER,
        desired=TwinProperties(metadata={LAST_UPDATED: created}),
        reported=TwinProperties(metadata={LAST_UPDATED: created}),
    )


def update_identity(
    device: HubDevice, identity: DeviceIdentity, *, now: datetime, random_bytes: RandomBytes
) -> HubDevice:
    """``device`` with its identity replaced; its twin and generation stay. The twin's
    version moves too, because a twin shows the identity's fields."""
    completed = complete_identity(identity, device.identity, random_bytes)
    status_changed = completed.status is not device.identity.status
    return replace(
        device,
        identity=completed,
        device_version=device.device_version + 1,
        twin_version=device.twin_version + 1,
        status_updated=now if status_changed else device.status_updated,
    )


def device_etag(device: HubDevice) -> str:
    """Base64 of the decimal text of the device's version, like IoT Hub's ``ODg1NTI5ODMz``."""
    return base64.b64encode(str(device.device_version).encode("ascii")).decode("ascii")


def twin_etag(device: HubDevice) -> str:
    """Base64 of the twin's version as 8 big-endian bytes, like IoT Hub's ``AAAAAAAAAAc=``."""
    return base64.b64encode(device.twin_version.to_bytes(8, "big")).decode("ascii")


def device_scope(device: HubDevice) -> str | None:
    """The scope IoT Hub gives an IoT Edge device (None for other devices)."""
    if not device.identity.iot_edge:
        return None
    return f"ms-azure-iot-edge://{device.device_id}-{device.generation_id}"


# --- twins ------------------------------------------------------------------------------


def patch_twin(device: HubDevice, patch: TwinContent, *, now: datetime) -> HubDevice:
    """``PATCH /twins/{id}``: tags and desired properties merged with ``patch`` (a key set
    to null is removed, objects merge key by key, anything else is replaced)."""
    tags_patch = _checked("tags", patch.tags)
    desired_patch = _checked("properties.desired", _writable_desired(patch.desired))
    tags = _merge(device.tags, tags_patch)
    desired = _merge(device.desired.values, desired_patch)
    metadata = _patched_metadata(
        device.desired.metadata,
        device.desired.values,
        desired_patch,
        _stamp(now, device.desired.version + 1),
    )
    return _with_twin(device, tags, desired, metadata)


def replace_twin(device: HubDevice, content: TwinContent, *, now: datetime) -> HubDevice:
    """``PUT /twins/{id}``: tags and desired properties become exactly ``content``."""
    tags = _merge({}, _checked("tags", content.tags))
    desired = _merge({}, _checked("properties.desired", _writable_desired(content.desired)))
    metadata = _fresh_metadata(desired, _stamp(now, device.desired.version + 1))
    return _with_twin(device, tags, desired, metadata)


def _with_twin(
    device: HubDevice, tags: JsonObject, desired: JsonObject, desired_metadata: JsonObject
) -> HubDevice:
    """The twin written: within its limits, a new desired version only when the desired
    properties changed, and a new twin version either way."""
    _check_size("tags", tags, MAX_TAGS_BYTES)
    _check_size("properties.desired", desired, MAX_DESIRED_BYTES)
    properties = device.desired
    if desired != properties.values:
        properties = TwinProperties(desired, properties.version + 1, desired_metadata)
    return replace(device, tags=tags, desired=properties, twin_version=device.twin_version + 1)


def _writable_desired(desired: JsonObject) -> JsonObject:
    return {key: value for key, value in desired.items() if key not in _READ_ONLY_DESIRED_KEYS}


def _merge(target: JsonObject, patch: JsonObject) -> JsonObject:
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            current = merged.get(key)
            merged[key] = _merge(current if isinstance(current, dict) else {}, value)
        else:
            merged[key] = value
    return merged


def _stamp(now: datetime, version: int) -> JsonObject:
    return {LAST_UPDATED: format_timestamp(now), LAST_UPDATED_VERSION: version}


def _fresh_metadata(value: JsonObject, stamp: JsonObject) -> JsonObject:
    """The metadata of a value written as a whole: the stamp on it and on all it holds."""
    children = {
        key: _fresh_metadata(child, stamp) if isinstance(child, dict) else dict(stamp)
        for key, child in value.items()
        if child is not None
    }
    return {**stamp, **children}


def _patched_metadata(
    metadata: JsonObject, before: JsonObject, patch: JsonObject, stamp: JsonObject
) -> JsonObject:
    """The metadata after ``patch`` merged into ``before``: what the patch touched carries
    the stamp, what it left alone keeps its own."""
    patched = {**metadata, **stamp}
    for key, value in patch.items():
        current = before.get(key)
        if value is None:
            patched.pop(key, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            inner = metadata.get(key)
            inner = inner if isinstance(inner, dict) else {}
            patched[key] = _patched_metadata(inner, current, value, stamp)
        elif isinstance(value, dict):
            patched[key] = _fresh_metadata(value, stamp)
        else:
            patched[key] = dict(stamp)
    return patched


def _checked(section: str, value: JsonObject) -> JsonObject:
    """``value`` if its keys are names a twin may hold and it nests no deeper than allowed."""
    _check_tree(value, section, 0)
    return value


def _check_tree(value: Any, path: str, depth: int) -> None:
    if isinstance(value, dict | list) and depth > MAX_TWIN_DEPTH:
        raise ValidationError(f"{path} nests objects more than {MAX_TWIN_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, child in value.items():
            _check_key(key, path)
            if not isinstance(child, _JSON_SCALARS):
                _check_tree(child, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            if not isinstance(child, _JSON_SCALARS):
                _check_tree(child, f"{path}[{index}]", depth + 1)
    elif not isinstance(value, _JSON_SCALARS):
        raise ValidationError(f"{path} holds {type(value).__name__}, which JSON cannot hold")


def _check_key(key: Any, path: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValidationError(f"{path} has an empty or non-text key name")
    if len(key.encode("utf-8")) > MAX_TWIN_KEY_BYTES:
        raise ValidationError(f"a key name in {path} is longer than {MAX_TWIN_KEY_BYTES} bytes")
    if _FORBIDDEN_IN_KEYS.search(key):
        raise ValidationError(
            f"key name {key!r} in {path} is invalid: it must not hold '.', '$', spaces or "
            "control characters"
        )


def _check_size(section: str, value: JsonObject, limit: int) -> None:
    size = len(_COMPACT_JSON.encode(value).encode("utf-8"))
    if size > limit:
        raise ValidationError(f"{section} take {size} bytes as JSON; the limit is {limit}")
