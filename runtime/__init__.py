"""Process plumbing every deployable shares: logging, tracing, health endpoints, Kafka topics."""
