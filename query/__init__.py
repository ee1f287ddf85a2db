"""The read path: metrics back from TimescaleDB, alert notifications back from Kafka."""
