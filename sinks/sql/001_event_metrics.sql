-- Per-window aggregates written by the dataflow: one row per (campaign, event type, bucket).
CREATE TABLE IF NOT EXISTS event_metrics (
    bucket       timestamptz      NOT NULL,
    campaign_id  text             NOT NULL,
    event_type   text             NOT NULL,
    event_count  bigint           NOT NULL CHECK (event_count > 0),
    value_sum    double precision NOT NULL,
    updated_at   timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT event_metrics_key UNIQUE (campaign_id, event_type, bucket)
);

SELECT create_hypertable('event_metrics', by_range('bucket', INTERVAL '1 day'), if_not_exists => TRUE);

-- Coarser resolutions: additive columns roll up exactly with time_bucket.
CREATE OR REPLACE VIEW event_metrics_hourly AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       campaign_id,
       event_type,
       sum(event_count)::bigint AS event_count,
       sum(value_sum)           AS value_sum
FROM event_metrics
GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW event_metrics_daily AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
       campaign_id,
       event_type,
       sum(event_count)::bigint AS event_count,
       sum(value_sum)           AS value_sum
FROM event_metrics
GROUP BY 1, 2, 3;
