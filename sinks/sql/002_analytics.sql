-- Window details, the late-event ledger, merged sketch rollups and alert transitions.
--
-- What is rolled up where:
-- * event_metrics holds one row per window. Its additive columns (counts, sums, min, max,
--   first/last event, late events) roll up to hours and days in SQL, in the views below.
-- * Distinct users and quantiles do not add up. The dataflow merges each closed window's
--   sketches into its hour and day and writes the merged estimates to
--   event_sketch_rollups; the views join them in.

-- 1. event_metrics: the rest of a window's aggregate. Value and time columns are NULL
--    while a bucket holds no on-time event; the sketches are stored on closed rows only.
ALTER TABLE event_metrics
    ADD COLUMN value_min      double precision,
    ADD COLUMN value_max      double precision,
    ADD COLUMN value_avg      double precision,
    ADD COLUMN unique_users   bigint  NOT NULL DEFAULT 0,
    ADD COLUMN value_p50      double precision,
    ADD COLUMN value_p95      double precision,
    ADD COLUMN value_p99      double precision,
    ADD COLUMN first_event_at timestamptz,
    ADD COLUMN last_event_at  timestamptz,
    ADD COLUMN late_events    bigint  NOT NULL DEFAULT 0,
    ADD COLUMN closed         boolean NOT NULL DEFAULT false,
    ADD COLUMN revision       bigint  NOT NULL DEFAULT 0,
    ADD COLUMN users_sketch   bytea,
    ADD COLUMN values_sketch  bytea;

-- Rows written before this migration: open windows of their count (revision = 2 * count,
-- as the dataflow numbers them), so only a grown or closed window replaces them.
UPDATE event_metrics
SET revision = 2 * event_count,
    value_avg = value_sum / event_count
WHERE revision = 0 AND event_count > 0;

-- A bucket that only ever received late events has a row with event_count = 0.
DO $$
DECLARE
    name text;
BEGIN
    FOR name IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'event_metrics'::regclass
          AND contype = 'c'
          AND pg_get_constraintdef(oid) LIKE '%event_count > 0%'
    LOOP
        EXECUTE format('ALTER TABLE event_metrics DROP CONSTRAINT %I', name);
    END LOOP;
END
$$;

ALTER TABLE event_metrics
    ADD CONSTRAINT event_metrics_event_count_check CHECK (event_count >= 0),
    ADD CONSTRAINT event_metrics_late_events_check CHECK (late_events >= 0);

-- 2. late_event_log: one row per late event, keyed by its Kafka origin. It is the
--    idempotency ledger of event_metrics.late_events: an event is counted only when its
--    ledger row is new, so replayed late events change nothing.
CREATE TABLE IF NOT EXISTS late_event_log (
    bucket           timestamptz NOT NULL,
    campaign_id      text        NOT NULL,
    event_type       text        NOT NULL,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    event_time       timestamptz NOT NULL,
    watermark        timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT late_event_log_source_key
        UNIQUE (source_topic, source_partition, source_offset, bucket)
);

SELECT create_hypertable('late_event_log', by_range('bucket', INTERVAL '1 day'), if_not_exists => TRUE);

CREATE INDEX IF NOT EXISTS late_event_log_campaign_idx
    ON late_event_log (campaign_id, event_type, bucket DESC);

-- 3. event_sketch_rollups: merged sketches of the closed windows of one hour or day, with
--    their estimates. event_count is the number of events merged so far; it only grows.
CREATE TABLE IF NOT EXISTS event_sketch_rollups (
    resolution    text             NOT NULL CHECK (resolution IN ('hour', 'day')),
    bucket        timestamptz      NOT NULL,
    campaign_id   text             NOT NULL,
    event_type    text             NOT NULL,
    event_count   bigint           NOT NULL CHECK (event_count >= 0),
    unique_users  bigint           NOT NULL,
    value_p50     double precision,
    value_p95     double precision,
    value_p99     double precision,
    users_sketch  bytea            NOT NULL,
    values_sketch bytea            NOT NULL,
    updated_at    timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT event_sketch_rollups_key UNIQUE (resolution, campaign_id, event_type, bucket)
);

SELECT create_hypertable(
    'event_sketch_rollups', by_range('bucket', INTERVAL '7 days'), if_not_exists => TRUE
);

-- 4. alerts: one row per alert transition (an incident fires once and resolves once).
CREATE TABLE IF NOT EXISTS alerts (
    alert_id     text             NOT NULL,
    state        text             NOT NULL CHECK (state IN ('firing', 'resolved')),
    rule         text             NOT NULL,
    rule_kind    text             NOT NULL,
    severity     text             NOT NULL,
    campaign_id  text             NOT NULL,
    event_type   text             NOT NULL,
    metric       text             NOT NULL,
    window_start timestamptz      NOT NULL,
    window_end   timestamptz      NOT NULL,
    observed     double precision NOT NULL,
    threshold    double precision NOT NULL,
    message      text             NOT NULL,
    created_at   timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT alerts_key UNIQUE (alert_id, state, window_start)
);

SELECT create_hypertable('alerts', by_range('window_start', INTERVAL '7 days'), if_not_exists => TRUE);

-- The latest alerts of a campaign (across campaigns: the hypertable's window_start index).
CREATE INDEX IF NOT EXISTS alerts_campaign_latest_idx ON alerts (campaign_id, window_start DESC);

-- 5. Hourly and daily views. Additive columns are rolled up here, in SQL, from
--    event_metrics; distinct users and quantiles come from the merged sketches in
--    event_sketch_rollups (joined after the GROUP BY, one rollup row per group).
--    unique_users is 0 and the quantiles are NULL until the dataflow has merged a closed
--    window of the hour or day; sketch_event_count says how many events the sketch
--    columns cover (equal to event_count once every window is closed and merged).
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
           bool_and(closed)         AS closed
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
           bool_and(closed)         AS closed
    FROM event_metrics
    GROUP BY 1, 2, 3
) AS m
LEFT JOIN event_sketch_rollups AS r
       ON r.resolution = 'day'
      AND r.campaign_id = m.campaign_id
      AND r.event_type = m.event_type
      AND r.bucket = m.bucket;
