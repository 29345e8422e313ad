"""What dpsd tells its operators: log lines (text for people, JSON lines for machines), the
tracking id that ties a request's lines to the error body its client got, and Prometheus
metrics.

It knows no edge and no store: the edges and the composition root report to it, and the
use cases reach it only through their port (``dpsd.service.device_events``).
"""
