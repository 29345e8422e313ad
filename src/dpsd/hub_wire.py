"""Wire models of IoT Hub's service REST API (the registry subset) and their mapping to the
domain: shared by the built-in hubs' HTTP edge and the client that writes into any hub.

What a client writes is decoded leniently, as the official service clients send it: the
Python client sends explicit nulls, the Node client a ``sas`` authentication with empty
keys when none was given, and both echo back fields the hub owns (etags, times, counts),
which are ignored like any field this API does not know. What the hub answers carries every
field IoT Hub shows, with IoT Hub's placeholders for what a built-in hub never tracks
(connection state, activity, cloud-to-device messages).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from dpsd.domain.errors import ValidationError
from dpsd.domain.hub_device import (
    NEVER,
    DeviceIdentity,
    DeviceStatus,
    HubAuthentication,
    HubAuthenticationType,
    HubDevice,
    HubSymmetricKey,
    TwinContent,
    TwinProperties,
    X509Thumbprint,
    device_etag,
    device_scope,
    twin_etag,
)
from dpsd.domain.timestamps import format_timestamp

JsonObject = dict[str, Any]

API_VERSION = "2021-04-12"
NEVER_TEXT = "0001-01-01T00:00:00Z"
DISCONNECTED = "Disconnected"
# Written by the hub into desired properties; a client echoing a twin back sends them too.
_HUB_OWNED_DESIRED = frozenset({"$version", "$metadata"})


class _Lenient(msgspec.Struct, rename="camel", omit_defaults=True):
    """A model of what clients write: every field optional, nulls accepted."""


# --- parts shared by what is written and what is answered ---------------------------------
# Nulls stay on the wire in these, as IoT Hub writes them (and the Python client too).


class SymmetricKeyWire(msgspec.Struct, rename="camel"):
    primary_key: str | None = None
    secondary_key: str | None = None


class X509ThumbprintWire(msgspec.Struct, rename="camel"):
    primary_thumbprint: str | None = None
    secondary_thumbprint: str | None = None


class AuthenticationWire(msgspec.Struct, rename="camel"):
    symmetric_key: SymmetricKeyWire | None = None
    type: str | None = None
    x509_thumbprint: X509ThumbprintWire | None = None


class CapabilitiesWire(msgspec.Struct, rename="camel"):
    iot_edge: bool | None = None


# --- what clients write -------------------------------------------------------------------


class DeviceBodyWire(_Lenient):
    """The body of ``PUT /devices/{id}``."""

    device_id: str | None = None
    status: str | None = None
    status_reason: str | None = None
    authentication: AuthenticationWire | None = None
    capabilities: CapabilitiesWire | None = None


class TwinPropertiesBodyWire(_Lenient):
    desired: JsonObject | None = None


class TwinBodyWire(_Lenient):
    """The body of ``PATCH|PUT /twins/{id}``, and what a hub's twin says to a client that
    wants only its tags and desired properties (reported properties are the device's)."""

    tags: JsonObject | None = None
    properties: TwinPropertiesBodyWire | None = None


class QuerySpecificationWire(_Lenient):
    query: str | None = None


# --- what the hub answers -----------------------------------------------------------------


class DeviceWire(msgspec.Struct, rename="camel", omit_defaults=True):
    device_id: str
    generation_id: str
    etag: str
    connection_state: str
    status: str
    status_reason: str | None
    connection_state_updated_time: str
    status_updated_time: str
    last_activity_time: str
    cloud_to_device_message_count: int
    authentication: AuthenticationWire
    capabilities: CapabilitiesWire
    device_scope: str | None = None
    parent_scopes: list[str] | None = None


class TwinPropertiesWire(msgspec.Struct):
    desired: JsonObject
    reported: JsonObject


class TwinWire(msgspec.Struct, rename="camel", omit_defaults=True):
    device_id: str
    etag: str
    device_etag: str
    status: str
    status_update_time: str
    connection_state: str
    last_activity_time: str
    cloud_to_device_message_count: int
    authentication_type: str
    x509_thumbprint: X509ThumbprintWire
    model_id: str
    version: int
    tags: JsonObject
    properties: TwinPropertiesWire
    capabilities: CapabilitiesWire
    status_reason: str | None = None
    device_scope: str | None = None
    parent_scopes: list[str] | None = None


class HubErrorWire(msgspec.Struct, rename="pascal"):
    """IoT Hub's classic error body: ``Message`` is ``ErrorCode:{Name};{text}``."""

    message: str
    exception_message: str


# --- wire -> domain -----------------------------------------------------------------------


def identity_from_wire(body: DeviceBodyWire, path_id: str) -> DeviceIdentity:
    """The identity a client wrote; a body without ``deviceId`` means the path's."""
    capabilities = body.capabilities
    return DeviceIdentity(
        device_id=path_id if body.device_id is None else body.device_id,
        authentication=_authentication_from_wire(body.authentication),
        status=_status_from_wire(body.status),
        status_reason=body.status_reason,
        iot_edge=bool(capabilities is not None and capabilities.iot_edge),
    )


def _status_from_wire(status: str | None) -> DeviceStatus:
    if status is None:
        return DeviceStatus.ENABLED
    for known in DeviceStatus:
        if known.value == status.lower():
            return known
    raise ValidationError(f"status must be 'enabled' or 'disabled', not {status!r}")


def _authentication_from_wire(wire: AuthenticationWire | None) -> HubAuthentication:
    """No authentication, or a type left out, means ``sas`` (with keys the hub makes when
    none are given), unless thumbprints say the device is ``selfSigned``."""
    if wire is None:
        return HubAuthentication(HubAuthenticationType.SAS, HubSymmetricKey())
    keys = wire.symmetric_key or SymmetricKeyWire()
    thumbprints = wire.x509_thumbprint or X509ThumbprintWire()
    symmetric_key = HubSymmetricKey(keys.primary_key or None, keys.secondary_key or None)
    x509_thumbprint = X509Thumbprint(
        thumbprints.primary_thumbprint or None, thumbprints.secondary_thumbprint or None
    )
    return HubAuthentication(
        _authentication_type(wire.type, x509_thumbprint), symmetric_key, x509_thumbprint
    )


def _authentication_type(text: str | None, thumbprints: X509Thumbprint) -> HubAuthenticationType:
    if not text:
        has_thumbprint = thumbprints.primary_thumbprint or thumbprints.secondary_thumbprint
        return HubAuthenticationType.SELF_SIGNED if has_thumbprint else HubAuthenticationType.SAS
    for known in HubAuthenticationType:
        if known.value.lower() == text.lower():
            return known
    names = ", ".join(repr(known.value) for known in HubAuthenticationType)
    raise ValidationError(f"authentication.type must be one of {names}, not {text!r}")


def twin_content_from_wire(body: TwinBodyWire) -> TwinContent:
    """Tags and desired properties as written (a null in a patch removes a key); what the
    hub keeps in the desired properties itself (``$version``, ``$metadata``) left out."""
    desired = body.properties.desired if body.properties is not None else None
    return TwinContent(
        tags=dict(body.tags or {}),
        desired={
            key: value for key, value in (desired or {}).items() if key not in _HUB_OWNED_DESIRED
        },
    )


# --- domain -> wire -----------------------------------------------------------------------


def identity_to_wire(identity: DeviceIdentity) -> DeviceBodyWire:
    """What a client writes to create or update ``identity`` in a hub."""
    return DeviceBodyWire(
        device_id=identity.device_id,
        status=identity.status.value,
        status_reason=identity.status_reason,
        authentication=_authentication_to_wire(identity.authentication),
        capabilities=CapabilitiesWire(iot_edge=identity.iot_edge),
    )


def twin_content_to_wire(content: TwinContent) -> TwinBodyWire:
    return TwinBodyWire(
        tags=content.tags, properties=TwinPropertiesBodyWire(desired=content.desired)
    )


def _authentication_to_wire(authentication: HubAuthentication) -> AuthenticationWire:
    keys = authentication.symmetric_key or HubSymmetricKey()
    return AuthenticationWire(
        symmetric_key=SymmetricKeyWire(keys.primary_key, keys.secondary_key),
        type=authentication.type.value,
        x509_thumbprint=_thumbprint_to_wire(authentication.x509_thumbprint),
    )


def _thumbprint_to_wire(thumbprints: X509Thumbprint | None) -> X509ThumbprintWire:
    if thumbprints is None:
        return X509ThumbprintWire()
    return X509ThumbprintWire(thumbprints.primary_thumbprint, thumbprints.secondary_thumbprint)


def hub_time(moment: datetime) -> str:
    """IoT Hub's timestamps: ``0001-01-01T00:00:00Z`` for never, else seven digits."""
    return NEVER_TEXT if moment == NEVER else format_timestamp(moment)


def device_to_wire(device: HubDevice) -> DeviceWire:
    identity = device.identity
    scope = device_scope(device)
    return DeviceWire(
        device_id=device.device_id,
        generation_id=device.generation_id,
        etag=device_etag(device),
        connection_state=DISCONNECTED,
        status=identity.status.value,
        status_reason=identity.status_reason,
        connection_state_updated_time=NEVER_TEXT,
        status_updated_time=hub_time(device.status_updated),
        last_activity_time=NEVER_TEXT,
        cloud_to_device_message_count=0,
        authentication=_authentication_to_wire(identity.authentication),
        capabilities=CapabilitiesWire(iot_edge=identity.iot_edge),
        device_scope=scope,
        parent_scopes=None if scope is None else [],
    )


def _properties_to_wire(properties: TwinProperties) -> JsonObject:
    return {**properties.values, "$metadata": properties.metadata, "$version": properties.version}


def twin_to_wire(device: HubDevice) -> TwinWire:
    identity = device.identity
    scope = device_scope(device)
    return TwinWire(
        device_id=device.device_id,
        etag=twin_etag(device),
        device_etag=device_etag(device),
        status=identity.status.value,
        status_reason=identity.status_reason,
        status_update_time=hub_time(device.status_updated),
        connection_state=DISCONNECTED,
        last_activity_time=NEVER_TEXT,
        cloud_to_device_message_count=0,
        authentication_type=identity.authentication.type.value,
        x509_thumbprint=_thumbprint_to_wire(identity.authentication.x509_thumbprint),
        model_id="",
        version=device.twin_version,
        tags=device.tags,
        properties=TwinPropertiesWire(
            desired=_properties_to_wire(device.desired),
            reported=_properties_to_wire(device.reported),
        ),
        capabilities=CapabilitiesWire(iot_edge=identity.iot_edge),
        device_scope=scope,
        parent_scopes=None if scope is None else [],
    )
