"""What the device protocol edges (MQTT, AMQP) share, so that neither copies the other.

``listener``: the TLS and WebSocket shells that carry a protocol's bytes, the limits on
connections per client address (one count for every protocol) and the connection deadlines.
``answers``: what a register or poll request answers, as the DPS bodies of the HTTPS device
API with the status they would have there.
"""
