"""Outbound adapters other than storage: custom allocation webhooks."""
