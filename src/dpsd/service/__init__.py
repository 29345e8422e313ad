"""Use cases of the DPS service API, shared by every protocol adapter."""
