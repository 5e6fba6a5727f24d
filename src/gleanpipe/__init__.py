"""gleanpipe: a personal-to-production data pipeline for Glean telemetry."""

__version__ = "0.1.0"
