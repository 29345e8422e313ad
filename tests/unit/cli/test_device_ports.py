"""The device listeners' ports: a number, 0 for any free port, a negative number for off."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from dpsd.cli.options import make_settings
from dpsd.settings import DEFAULT_AMQP_PORT, DEFAULT_MQTT_PORT


def test_amqp_and_mqtt_listen_by_default(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None)
    assert (settings.mqtt_port, settings.amqp_port) == (DEFAULT_MQTT_PORT, DEFAULT_AMQP_PORT)
    assert DEFAULT_AMQP_PORT == 5671


def test_a_negative_port_turns_a_listener_off(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, None, mqtt_port=-1, amqp_port=-1)
    assert (settings.mqtt_port, settings.amqp_port) == (None, None)
    assert make_settings(tmp_path, None, amqp_port=0).amqp_port == 0


def test_a_port_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(typer.BadParameter, match="amqp port"):
        make_settings(tmp_path, None, amqp_port=70000)
