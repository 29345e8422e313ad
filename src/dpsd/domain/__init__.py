"""The DPS vocabulary: enrollments, attestation, access policies. Pure: no I/O, no clock."""
