-- Dimension slices (PULSE_GROUP_BY): the aggregates of event_metrics and
-- event_sketch_rollups again, per configured dimension set and per combination of
-- its values.
--
-- * dimension_set names the set, its dimensions sorted and comma-separated
--   ('country', 'country,device').
-- * dimensions holds the slice's values as a JSON object ({"country": "DE",
--   "device": "ios"}), with '__missing__' for events that lack a dimension and
--   '__other__' for values past the distinct-values limit. jsonb rather than a column
--   per dimension: sets are configuration, not schema, and containment filters
--   (dimensions @> '{"country": "DE"}') use the GIN index below.
-- * Every other column means what it means in event_metrics; late_events counts only
--   the late events folded in as corrections (those beyond the correction horizon are
--   counted per campaign, in event_metrics.late_events).
-- For any dimension set, the sum of event_count (and value_sum) over its slices equals
-- the campaign's row in event_metrics.

CREATE TABLE IF NOT EXISTS event_metrics_by_dimensions (
    LIKE event_metrics INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    dimension_set text  NOT NULL,
    dimensions    jsonb NOT NULL,
    CONSTRAINT event_metrics_by_dimensions_key
        UNIQUE (campaign_id, event_type, dimension_set, dimensions, bucket)
);

SELECT create_hypertable(
    'event_metrics_by_dimensions', by_range('bucket', INTERVAL '1 day'), if_not_exists => TRUE
);

-- A campaign's slices of one set over a time range (QueryMetrics, dashboards).
CREATE INDEX IF NOT EXISTS event_metrics_by_dimensions_set_idx
    ON event_metrics_by_dimensions (campaign_id, dimension_set, bucket DESC);
-- Filters on values across campaigns.
CREATE INDEX IF NOT EXISTS event_metrics_by_dimensions_values_idx
    ON event_metrics_by_dimensions USING gin (dimensions jsonb_path_ops);

CREATE TABLE IF NOT EXISTS event_sketch_rollups_by_dimensions (
    LIKE event_sketch_rollups INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    dimension_set text  NOT NULL,
    dimensions    jsonb NOT NULL,
    CONSTRAINT event_sketch_rollups_by_dimensions_key
        UNIQUE (resolution, campaign_id, event_type, dimension_set, dimensions, bucket)
);

SELECT create_hypertable(
    'event_sketch_rollups_by_dimensions', by_range('bucket', INTERVAL '7 days'),
    if_not_exists => TRUE
);

-- Hourly and daily slices, as event_metrics_hourly and event_metrics_daily.
CREATE OR REPLACE VIEW event_metrics_by_dimensions_hourly AS
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
       coalesce(r.event_count, 0)             AS sketch_event_count,
       m.dimension_set,
       m.dimensions
FROM (
    SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
           campaign_id,
           event_type,
           dimension_set,
           dimensions,
           sum(event_count)::bigint AS event_count,
           sum(value_sum)           AS value_sum,
           min(value_min)           AS value_min,
           max(value_max)           AS value_max,
           min(first_event_at)      AS first_event_at,
           max(last_event_at)       AS last_event_at,
           sum(late_events)::bigint AS late_events,
           bool_and(closed)         AS closed,
           sum(on_time_count)::bigint AS on_time_count
    FROM event_metrics_by_dimensions
    GROUP BY 1, 2, 3, 4, 5
) AS m
LEFT JOIN event_sketch_rollups_by_dimensions AS r
       ON r.resolution = 'hour'
      AND r.campaign_id = m.campaign_id
      AND r.event_type = m.event_type
      AND r.dimension_set = m.dimension_set
      AND r.dimensions = m.dimensions
      AND r.bucket = m.bucket;

CREATE OR REPLACE VIEW event_metrics_by_dimensions_daily AS
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
       coalesce(r.event_count, 0)             AS sketch_event_count,
       m.dimension_set,
       m.dimensions
FROM (
    SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
           campaign_id,
           event_type,
           dimension_set,
           dimensions,
           sum(event_count)::bigint AS event_count,
           sum(value_sum)           AS value_sum,
           min(value_min)           AS value_min,
           max(value_max)           AS value_max,
           min(first_event_at)      AS first_event_at,
           max(last_event_at)       AS last_event_at,
           sum(late_events)::bigint AS late_events,
           bool_and(closed)         AS closed,
           sum(on_time_count)::bigint AS on_time_count
    FROM event_metrics_by_dimensions
    GROUP BY 1, 2, 3, 4, 5
) AS m
LEFT JOIN event_sketch_rollups_by_dimensions AS r
       ON r.resolution = 'day'
      AND r.campaign_id = m.campaign_id
      AND r.event_type = m.event_type
      AND r.dimension_set = m.dimension_set
      AND r.dimensions = m.dimensions
      AND r.bucket = m.bucket;
