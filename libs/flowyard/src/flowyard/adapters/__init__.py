"""Adapters: the only modules that talk to Kafka, MongoDB and Prometheus."""
