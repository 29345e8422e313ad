"""The HTTPS edge: the DPS service API as an ASGI application."""
