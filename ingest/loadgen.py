"""Synthetic load: streams N generated events through the gRPC edge and reports throughput."""

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from protos.analytics.v1 import analytics_pb2 as pb
from pulse.timeutil import now_ms

from .client import PulseClient

EVENT_MIX = (("impression", 80), ("click", 15), ("conversion", 5))


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to send: how many events, over how many campaigns, how fast (0 = unthrottled).

    `events_per_call` events go in one `IngestEventBatches` call; with a `rate`, the calls
    are spaced out, so a smaller value gives a steadier stream. `event_types`, when not
    empty, replaces the default mix (`EVENT_MIX`): each event draws one of them evenly.
    Campaign ids are `campaign_prefix`-NNN for NNN from `first_campaign` on. Event ids
    are `load-<run>-<n>`: `run` is new for every plan unless given, so two runs never
    send the same ids (the pipeline would count the second run's events as retries).
    """

    events: int
    campaigns: int = 20
    campaign_prefix: str = "campaign"
    first_campaign: int = 0
    users: int = 10_000
    batch_size: int = 500
    events_per_call: int = 50_000
    rate: float = 0.0
    seed: int = 1
    event_types: tuple[str, ...] = ()
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12], compare=False)

    def __post_init__(self) -> None:
        if self.campaigns < 1 or self.batch_size < 1 or self.events_per_call < 1:
            msg = "campaigns, batch_size and events_per_call must be at least 1"
            raise ValueError(msg)
        if self.first_campaign < 0:
            msg = "first_campaign must not be negative"
            raise ValueError(msg)
        if any(not t for t in self.event_types):
            msg = "event types must not be empty"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class LoadReport:
    sent: int
    accepted: int
    rejected: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"sent {self.sent:,}  accepted {self.accepted:,}  rejected {self.rejected:,}  "
            f"in {self.seconds:.2f} s  = {self.events_per_second:,.0f} events/s"
        )


def build_batches(
    plan: LoadPlan, count: int, first_id: int, rng: random.Random
) -> Iterator[pb.EventBatch]:
    """`count` events with times within the last 2 s, spread over campaigns and users.

    Event types follow `plan.event_types` if given, else the weights of `EVENT_MIX`.

    Events are built in place in their batch (`events.add`), which is about twice as fast
    as building each `RawEvent` and appending a copy.
    """
    types = list(plan.event_types) or [name for name, weight in EVENT_MIX for _ in range(weight)]
    first = plan.first_campaign
    campaigns = [f"{plan.campaign_prefix}-{i:03d}" for i in range(first, first + plan.campaigns)]
    draw = rng.random
    now = now_ms()
    for start in range(first_id, first_id + count, plan.batch_size):
        batch = pb.EventBatch()
        add = batch.events.add
        for i in range(start, min(start + plan.batch_size, first_id + count)):
            event_type = types[int(draw() * len(types))]
            event = add(
                campaign_id=campaigns[int(draw() * len(campaigns))],
                event_type=event_type,
                timestamp=now - int(draw() * 2000),
                event_id=f"load-{plan.run}-{i}",
                value=int(draw() * 200) / 8 if event_type != "impression" else 0.0,
            )
            event.dimensions["user_id"] = f"user-{int(draw() * plan.users)}"
            event.dimensions["country"] = "NL"
        yield batch


async def run_load(target: str, plan: LoadPlan, progress: bool = True) -> LoadReport:
    """Stream the plan's events in calls of `events_per_call`; print a progress bar."""
    rng = random.Random(plan.seed)  # noqa: S311 (synthetic data, not security)
    sent = accepted = rejected = 0
    started = time.perf_counter()
    unlimited = plan.events <= 0
    bar = tqdm(
        total=None if unlimited else plan.events, unit="ev", unit_scale=True, disable=not progress
    )
    async with PulseClient(target, plan.batch_size) as client:
        while unlimited or sent < plan.events:
            count = (
                plan.events_per_call if unlimited else min(plan.events_per_call, plan.events - sent)
            )
            response = await client.ingest_batches(build_batches(plan, count, sent, rng))
            sent += count
            accepted += response.accepted
            rejected += response.dropped
            bar.update(count)
            if plan.rate > 0:
                ahead = sent / plan.rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
    bar.close()
    return LoadReport(sent, accepted, rejected, time.perf_counter() - started)
