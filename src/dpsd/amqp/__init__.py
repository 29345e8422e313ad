"""The AMQP 1.0 device endpoint: DPS registration as the official Node, C, C# and Java
device SDKs speak it, over TLS (5671) and WebSockets (``AMQPWSB10`` on the HTTPS port).

No maintained Python AMQP 1.0 server exists, so the core is python-qpid-proton's engine
used without I/O (``engine``) behind dpsd's own SASL layer (``codec``, ``sasl``): proton's
built-in SASL never shows a PLAIN password, which carries a device's SAS token, nor a custom
mechanism's bytes (``TPM``). ``connection`` joins them into one sans-I/O state machine
(``links`` keeps its sessions, links, requests and answers), ``handlers`` gives links and
messages their DPS meaning, and ``server`` is the thin asyncio shell on the listeners
shared with MQTT (``dpsd.devices.listener``).
"""
