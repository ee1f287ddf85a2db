"""Free TCP ports for the servers tests and benchmarks start."""

import random
import socket


def free_port() -> int:
    """A port free on every address, below the kernel's ephemeral range (32768 and up):
    a port from that range can be taken by an outgoing connection between this check
    and the server's bind (a dataflow then lost its API port to a Kafka client)."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20_000, 32_768)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    msg = "no free port in 20000-32767"
    raise RuntimeError(msg)
