"""The MQTT device endpoint: a sans-I/O MQTT 3.1.1 core (codec, DPS topics).

Written here rather than taken from a library: the Python MQTT libraries are clients or
complete brokers with their own I/O; DPS needs a small server side (one client id per
connection, no retained messages, no sessions) that takes bytes and gives packets back.
"""
