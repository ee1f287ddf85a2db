-- Late corrections: events that reach a closed window within the correction horizon are
-- folded into its row (and into the merged sketches of its hour and day).
--
-- * event_count and every value column now hold all counted events: on time plus late
--   corrections. on_time_count is the count the window had when it closed; the late
--   events folded in since are event_count - on_time_count, and late_events minus those
--   is the number that came beyond the horizon (only counted in late_events).
-- * corrected_offset is the highest events.raw offset folded in by a correction (-1:
--   none). A correction merges only events above it, so replays add nothing twice.
-- * corrected_at is when the last correction was applied (NULL: never corrected).

ALTER TABLE event_metrics
    ADD COLUMN on_time_count    bigint      NOT NULL DEFAULT 0,
    ADD COLUMN corrected_offset bigint      NOT NULL DEFAULT -1,
    ADD COLUMN corrected_at     timestamptz;

-- Rows written before this migration were never corrected.
UPDATE event_metrics SET on_time_count = event_count WHERE event_count > 0;

ALTER TABLE event_metrics
    ADD CONSTRAINT event_metrics_on_time_count_check
        CHECK (on_time_count >= 0 AND on_time_count <= event_count);

ALTER TABLE event_sketch_rollups
    ADD COLUMN corrected_offset bigint NOT NULL DEFAULT -1;

-- The hourly and daily views gain on_time_count (the sum of their windows').
DROP VIEW IF EXISTS event_metrics_hourly;
DROP VIEW IF EXISTS event_metrics_daily;

CREATE VIEW event_metrics_hourly AS
SELECT m.bucket,
       m.campaign_id,
       m.event_type,
       m.event_count,
       m.value_sum,
       m.value_min,
       m.value_max,
       m.value_sum / nullif(m.event_count, 0) AS value_avg,
       coalesce(r.unique_users, 0)            AS unique_users,
       r.value_p50,
       r.value_p95,
       r.value_p99,
       m.first_event_at,
       m.last_event_at,
       m.late_events,
       m.closed,
       m.on_time_count,
       coalesce(r.event_count, 0)             AS sketch_event_count
FROM (
    SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
           campaign_id,
           event_type,
           sum(event_count)::bigint AS event_count,
           sum(value_sum)           AS value_sum,
           min(value_min)           AS value_min,
           max(value_max)           AS value_max,
           min(first_event_at)      AS first_event_at,
           max(last_event_at)       AS last_event_at,
           sum(late_events)::bigint AS late_events,
           bool_and(closed)         AS closed,
           sum(on_time_count)::bigint AS on_time_count
    FROM event_metrics
    GROUP BY 1, 2, 3
) AS m
LEFT JOIN event_sketch_rollups AS r
       ON r.resolution = 'hour'
      AND r.campaign_id = m.campaign_id
      AND r.event_type = m.event_type
      AND r.bucket = m.bucket;

CREATE VIEW event_metrics_daily AS
SELECT m.bucket,
       m.campaign_id,
       m.event_type,
       m.event_count,
       m.value_sum,
       m.value_min,
       m.value_max,
       m.value_sum / nullif(m.event_count, 0) AS value_avg,
       coalesce(r.unique_users, 0)            AS unique_users,
       r.value_p50,
       r.value_p95,
       r.value_p99,
       m.first_event_at,
       m.last_event_at,
       m.late_events,
       m.closed,
       m.on_time_count,
       coalesce(r.event_count, 0)             AS sketch_event_count
FROM (
    SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
           campaign_id,
           event_type,
           sum(event_count)::bigint AS event_count,
           sum(value_sum)           AS value_sum,
           min(value_min)           AS value_min,
           max(value_max)           AS value_max,
           min(first_event_at)      AS first_event_at,
           max(last_event_at)       AS last_event_at,
           sum(late_events)::bigint AS late_events,
           bool_and(closed)         AS closed,
           sum(on_time_count)::bigint AS on_time_count
    FROM event_metrics
    GROUP BY 1, 2, 3
) AS m
LEFT JOIN event_sketch_rollups AS r
       ON r.resolution = 'day'
      AND r.campaign_id = m.campaign_id
      AND r.event_type = m.event_type
      AND r.bucket = m.bucket;
