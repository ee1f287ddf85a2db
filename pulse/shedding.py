"""Load shedding at a configured number of campaigns: memory stays bounded at any key count.

The dataflow's state grows with the campaigns it aggregates: open windows, and hour and
day rollup accumulators that live until their day has passed. To bound it, each
partition aggregates at most `max_campaigns` distinct campaigns per UTC day of event
time. Events of further campaigns of a full day are *shed*: not counted, but written
with their raw bytes to the shed topic, counted in a metric and logged once per
partition and day, so nothing is lost silently and an operator can replay them into a
larger deployment.

Decisions depend only on the partition's records in offset order (and the snapshot):
a campaign is admitted for a day by its first event of that day that arrives while the
day has room. A day whose end is more than the correction horizon before the heartbeat
floor can no longer count events; its events are admitted without being tracked (they
are late either way), and its set is forgotten. That bound is taken at each record's
position, so replays that cut batches elsewhere decide every event alike.
"""

from dataclasses import dataclass

from pulse.preagg import NO_TIME, Record
from pulse.windows import DAY_MS, bucket_start

LimitSnapshot = tuple[tuple[int, tuple[str, ...]], ...]  # (day, admitted campaigns)


@dataclass(frozen=True, slots=True)
class ShedEvent:
    """An event of a campaign past the day's campaign limit: not counted, set aside."""

    campaign_id: str
    day_start_ms: int
    partition: int
    offset: int
    timestamp_ms: int
    raw: bytes


class CampaignLimit:
    """One partition's admitted campaigns per UTC day, at most `max_campaigns` each.

    `horizon_ms` is how far behind the heartbeat floor a day must end before none of its
    events can count (correction horizon plus one window); `idle_ms` turns heartbeat
    times into the floor, as the watermark does.
    """

    def __init__(self, max_campaigns: int, idle_ms: int, horizon_ms: int) -> None:
        self.max_campaigns = max_campaigns
        self._idle_ms = idle_ms
        self._horizon_ms = horizon_ms
        self._days: dict[int, set[str]] = {}
        # Each day's admitted campaigns as a tuple for snapshots, made again only after
        # the day admitted another (Bytewax snapshots every epoch; new campaigns are rare).
        self._frozen: dict[int, tuple[str, ...]] = {}
        self.full: list[int] = []  # days that filled up since the caller last took them

    def filter(
        self, records: list[Record], partition: int, heartbeat_ms: int
    ) -> tuple[list[Record], list[ShedEvent]]:
        """The records to aggregate and the events shed, in offset order; `heartbeat_ms`
        is the partition's latest heartbeat before these records."""
        kept: list[Record] = []
        shed: list[ShedEvent] = []
        days = self._days
        limit = self.max_campaigns
        bound = self._bound(heartbeat_ms)
        checked: dict[str, int] = {}  # campaign -> the day it was last admitted for here
        for record in records:
            campaign, _type, ts = record[0], record[1], record[2]
            if not campaign:  # a heartbeat: days may pass the bound
                if ts > heartbeat_ms:
                    heartbeat_ms, bound = ts, self._bound(ts)
                kept.append(record)
                continue
            day = bucket_start(ts, DAY_MS)
            if checked.get(campaign) == day or day + DAY_MS <= bound:
                kept.append(record)
                continue
            admitted = days.get(day)
            if admitted is None:
                admitted = days[day] = set()
            if campaign in admitted:
                checked[campaign] = day
                kept.append(record)
            elif len(admitted) < limit:
                admitted.add(campaign)
                self._frozen.pop(day, None)
                checked[campaign] = day
                kept.append(record)
                if len(admitted) == limit:
                    self.full.append(day)
            else:
                shed.append(ShedEvent(campaign, day, partition, record[5], ts, record[6]))
        self._forget(bound)
        return kept, shed

    def _bound(self, heartbeat_ms: int) -> int:
        if heartbeat_ms == NO_TIME:
            return NO_TIME
        return heartbeat_ms - self._idle_ms - self._horizon_ms

    def _forget(self, bound: int) -> None:
        for day in [d for d in self._days if d + DAY_MS <= bound]:
            del self._days[day]
            self._frozen.pop(day, None)

    def take_full(self) -> list[int]:
        out, self.full = self.full, []
        return out

    def admitted(self, day_start_ms: int) -> int:
        return len(self._days.get(day_start_ms, ()))

    def snapshot(self) -> LimitSnapshot:
        frozen = self._frozen
        for day, campaigns in self._days.items():
            if day not in frozen:
                frozen[day] = tuple(campaigns)
        return tuple(sorted(frozen.items()))

    def restored(self, saved: LimitSnapshot) -> "CampaignLimit":
        """This (new) limit, holding the admitted campaigns of a snapshot."""
        self._days = {day: set(campaigns) for day, campaigns in saved}
        return self
