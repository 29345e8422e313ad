"""Custom allocation: POST the device's context to the enrollment's webhook, as Azure DPS
does, and read back the hub (and optionally a payload and initial twin) it chooses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from dpsd.domain.allocation import AllocationFailed
from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.service.ports import CustomAllocationRequest, CustomAllocationResult

FAILED_CODE = 400210
MAX_ANSWER_BYTES = 96 * 1024


class _Answer(msgspec.Struct, rename="camel"):
    iot_hub_host_name: str
    initial_twin: dict[str, Any] | None = None
    payload: Any = None


class WebhookCustomAllocator:
    """``render_*`` turn records into their service API JSON (secrets left out)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        render_enrollment: Callable[[IndividualEnrollment], Any],
        render_group: Callable[[EnrollmentGroup], Any],
        timeout: float,
    ) -> None:
        self._client = client
        self._render_enrollment = render_enrollment
        self._render_group = render_group
        self._timeout = timeout

    def body(self, request: CustomAllocationRequest) -> dict[str, Any]:
        context: dict[str, Any] = {"registrationId": request.registration_id}
        if request.current_hub:
            context["currentIotHubHostName"] = request.current_hub
        if request.current_device_id:
            context["currentDeviceId"] = request.current_device_id
        context[request.attestation_type] = {}
        if request.payload is not None:
            context["payload"] = request.payload
        body: dict[str, Any] = {
            "deviceRuntimeContext": context,
            "linkedHubs": list(request.linked_hubs),
        }
        if request.individual_enrollment is not None:
            body["individualEnrollment"] = self._render_enrollment(request.individual_enrollment)
        if request.enrollment_group is not None:
            body["enrollmentGroup"] = self._render_group(request.enrollment_group)
        return body

    async def allocate(self, request: CustomAllocationRequest) -> CustomAllocationResult:
        try:
            response = await self._client.post(
                request.webhook_url, json=self.body(request), timeout=self._timeout
            )
        except httpx.TimeoutException as error:
            raise AllocationFailed(
                f"Custom allocation timed out after {self._timeout:g} s", FAILED_CODE
            ) from error
        except httpx.HTTPError as error:
            raise AllocationFailed(
                f"Custom allocation could not reach its webhook: {type(error).__name__}",
                FAILED_CODE,
            ) from error
        if not response.is_success:
            raise AllocationFailed(
                f"Custom allocation failed with status code: {response.status_code}", FAILED_CODE
            )
        if len(response.content) > MAX_ANSWER_BYTES:
            raise AllocationFailed("Custom allocation answered more than 96 KB", FAILED_CODE)
        try:
            answer = msgspec.json.decode(response.content, type=_Answer)
        except msgspec.DecodeError as error:
            raise AllocationFailed(
                f"Custom allocation answered something other than an allocation: {error}",
                FAILED_CODE,
            ) from error
        return CustomAllocationResult(answer.iot_hub_host_name, answer.initial_twin, answer.payload)
