"""With no reachable Kafka the edge says so: NOT_SERVING health and UNAVAILABLE ingest."""

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ingest.client import PulseClient
from protos.analytics.v1 import analytics_pb2 as pb
from tests.conftest import Stack, Topics
from tests.e2e.conftest import Pipeline
from tests.ports import free_port


def test_unreachable_kafka_is_reported_never_accepted(
    stack: Stack, database: str, topics: Topics, tmp_path
) -> None:
    edge = Pipeline(stack, database, topics, tmp_path)
    edge.env["PULSE_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"  # nothing listens there
    edge.env["PULSE_PRODUCE_TIMEOUT_SECONDS"] = "2"
    edge.start("serve")
    try:
        status = None
        with grpc.insecure_channel(edge.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    break
                except grpc.RpcError:
                    time.sleep(0.2)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING

        now = int(time.time() * 1000)
        events = [
            pb.RawEvent(campaign_id="c", event_type="click", event_id=f"e{i}", timestamp=now)
            for i in range(10)
        ]

        async def send() -> None:
            async with PulseClient(edge.target) as client:
                await client.ingest(events)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            asyncio.run(send())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "0 of 10 valid events were acknowledged" in (info.value.details() or "")
    finally:
        edge.stop_all()
