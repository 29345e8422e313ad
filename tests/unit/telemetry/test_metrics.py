"""The metrics of one process: what each report moves, the /metrics app, and registrations
reported by the use cases turned into lines and counts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from dpsd.domain.registration import (
    AssignedDeviceSubstatus,
    DeviceRegistrationState,
    RegistrationOperation,
    RegistrationStatus,
)
from dpsd.service.device_events import (
    DeviceProtocol,
    DeviceRefused,
    RegistrationFinished,
    RegistrationStarted,
)
from dpsd.telemetry.metrics import Metrics, SharedFilesCollector, metrics_app
from dpsd.telemetry.registrations import ReportedRegistrations
from tests.log_capture import captured_logs, json_lines

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_requests_are_counted_and_timed_by_api_operation_and_status() -> None:
    metrics = Metrics()
    for seconds in (0.0004, 0.003, 0.003):
        metrics.request("dps", "GET /enrollments/{id}", 200, seconds)
    metrics.request("dps", "GET /enrollments/{id}", 404, 0.001)
    labels = {"api": "dps", "operation": "GET /enrollments/{id}"}
    assert value(metrics, "dpsd_http_requests_total", **labels, status="200") == 3
    assert value(metrics, "dpsd_http_requests_total", **labels, status="404") == 1
    assert value(metrics, "dpsd_http_request_duration_seconds_count", **labels) == 4
    histogram = "dpsd_http_request_duration_seconds_bucket"
    assert value(metrics, histogram, **labels, le="0.0005") == 1
    assert value(metrics, histogram, **labels, le="0.005") == 4


def test_registrations_connections_and_store_errors() -> None:
    metrics = Metrics()
    metrics.registration("mqtt", "symmetricKey", "assigned", 0.02)
    metrics.registration("https", "x509", "refused")
    metrics.connection_opened("amqp")
    metrics.connection_opened("amqp")
    metrics.connection_closed("amqp")
    metrics.store_error()
    assigned = {"protocol": "mqtt", "attestation": "symmetricKey", "outcome": "assigned"}
    assert value(metrics, "dpsd_registrations_total", **assigned) == 1
    refused = {"protocol": "https", "attestation": "x509", "outcome": "refused"}
    assert value(metrics, "dpsd_registrations_total", **refused) == 1
    timed = {"protocol": "mqtt", "outcome": "assigned"}
    assert value(metrics, "dpsd_registration_duration_seconds_count", **timed) == 1
    assert value(metrics, "dpsd_device_connections", protocol="amqp") == 1
    assert value(metrics, "dpsd_device_connections", protocol="mqtt") == 0
    assert value(metrics, "dpsd_store_errors_total") == 1


def test_each_process_counts_on_its_own() -> None:
    first, second = Metrics(process=True), Metrics(process=True)
    first.store_error()
    assert value(second, "dpsd_store_errors_total") == 0
    assert value(first, "process_cpu_seconds_total") is not None


async def test_the_metrics_app_serves_metrics_only() -> None:
    metrics = Metrics()
    metrics.request("hub", "GET /devices/{id}", 200, 0.001)
    transport = httpx.ASGITransport(app=metrics_app(metrics))
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        scraped = await client.get("/metrics")
        assert scraped.status_code == 200
        families = {family.name for family in text_string_to_metric_families(scraped.text)}
        assert {"dpsd_info", "dpsd_http_requests", "dpsd_device_connections"} <= families
        assert (await client.get("/")).status_code == 404
        assert (await client.post("/metrics")).status_code == 404


def operation(attestation: str | None = "symmetricKey") -> RegistrationOperation:
    return RegistrationOperation(
        operation_id="4.0123456789abcdef.op",
        registration_id="dev-1",
        status=RegistrationStatus.ASSIGNING,
        created=NOW,
        last_updated=NOW,
        attestation_type=attestation,
    )


def state(status: RegistrationStatus, **fields: object) -> DeviceRegistrationState:
    return DeviceRegistrationState("dev-1", status, "etag", NOW, NOW, **fields)  # type: ignore[arg-type]


def test_registration_events_become_lines_and_counts() -> None:
    metrics = Metrics()
    reported = ReportedRegistrations(metrics)
    assigned = state(
        RegistrationStatus.ASSIGNED,
        assigned_hub="hub1.example",
        device_id="pump-1",
        substatus=AssignedDeviceSubstatus.INITIAL_ASSIGNMENT,
    )
    failed = state(RegistrationStatus.FAILED, error_code=400209, error_message="hub refused")
    with captured_logs() as stream:
        reported.refused(DeviceRefused(DeviceProtocol.AMQP, "dev-9", "x509", "unknown cert"))
        reported.started(RegistrationStarted(DeviceProtocol.MQTT, operation(), "hashed"))
        for outcome in (assigned, failed, None):
            reported.finished(
                RegistrationFinished(DeviceProtocol.MQTT, operation(), outcome, "hashed", 0.25)
            )
    refused, started, done, broken, errored = json_lines(stream)
    assert (refused["event"], refused["message"]) == (
        "refused",
        "amqp device dev-9 refused: unknown cert",
    )
    assert (started["event"], started["allocation_policy"]) == ("registering", "hashed")
    assert done["message"] == "mqtt device dev-1 assigned to hub1.example"
    assert (done["device_id"], done["substatus"], done["duration_ms"]) == (
        "pump-1",
        "initialAssignment",
        250.0,
    )
    assert (broken["level"], broken["error_code"], broken["message"]) == (
        "WARNING",
        400209,
        "mqtt device dev-1 failed: hub refused",
    )
    assert (errored["level"], errored["event"]) == ("ERROR", "error")
    for outcome in ("assigned", "failed", "error"):
        labels = {"protocol": "mqtt", "attestation": "symmetricKey", "outcome": outcome}
        assert value(metrics, "dpsd_registrations_total", **labels) == 1
    refused_labels = {"protocol": "amqp", "attestation": "x509", "outcome": "refused"}
    assert value(metrics, "dpsd_registrations_total", **refused_labels) == 1


def write_worker_counter(directory: Path, pid: int, protocol: str, count: float) -> None:
    """What a worker counting in the shared files keeps for one counter (prometheus-client's
    own file format)."""
    values = MmapedDict(str(directory / f"counter_{pid}.db"))
    labels = ["protocol", "attestation", "outcome"]
    key = mmap_key(
        "dpsd_registrations",
        "dpsd_registrations_total",
        labels,
        [protocol, "symmetricKey", "assigned"],
        "help",
    )
    values.write_value(key, count, 0.0)
    values.close()


def test_workers_counts_are_summed_and_a_file_a_worker_is_making_is_left_for_later(
    tmp_path: Path,
) -> None:
    write_worker_counter(tmp_path, 101, "mqtt", 2)
    write_worker_counter(tmp_path, 102, "mqtt", 3)
    (tmp_path / "counter_103.db").touch()  # a worker starting: created, not sized yet
    metrics = Metrics(shared=tmp_path)  # collects once as it registers: nothing fails
    labels = {"protocol": "mqtt", "attestation": "symmetricKey", "outcome": "assigned"}
    assert value(metrics, "dpsd_registrations_total", **labels) == 5
    write_worker_counter(tmp_path, 103, "mqtt", 4)  # sized and written since
    assert value(metrics, "dpsd_registrations_total", **labels) == 9


def test_a_workers_file_gone_while_the_files_are_read_has_them_listed_again(
    tmp_path: Path,
) -> None:
    write_worker_counter(tmp_path, 101, "amqp", 2)
    collector = SharedFilesCollector(tmp_path)
    listed = [[str(tmp_path / "counter_999.db")]]  # listed, then forgotten by the supervisor
    real = collector._written_files
    collector._written_files = lambda: listed.pop() if listed else real()  # type: ignore[method-assign]
    (family,) = [family for family in collector.collect() if family.name == "dpsd_registrations"]
    assert [sample.value for sample in family.samples] == [2.0]
