"""The AMQP 1.0 device endpoint: DPS registration as the official Node, C, C# and Java
device SDKs speak it, over TLS (5671) and WebSockets (``AMQPWSB10`` on the HTTPS port).

Everything below the asyncio shell is sans-I/O and dpsd's own: AMQP's type system
(``types``), the SASL layer (``codec``, ``sasl``: PLAIN, whose password is a device's SAS
token, and the custom ``TPM`` mechanism) and the engine (``engine``: framing, sessions,
links, flow control, settlement, heartbeats; why not proton's is in its docstring).
``connection`` joins them into one sans-I/O state machine
(``links`` keeps its sessions, links, requests and answers), ``handlers`` gives links and
messages their DPS meaning, and ``server`` is the thin asyncio shell on the listeners
shared with MQTT (``dpsd.devices.listener``).
"""
