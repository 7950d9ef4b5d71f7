"""gpslib."""
