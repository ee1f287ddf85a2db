-- Rows of open windows and rollups are written, then rewritten as they grow and close.
-- With half of each page left free, most of those rewrites are HOT updates (the new
-- version goes on the same page, no index entry changes): the sink's update rate went
-- from 70,000-75,000 to 106,000-111,000 rows/s (benchmarks/bench_sink.py), 94% of the
-- updates HOT, for about twice the pages while rows are young. TimescaleDB applies the
-- setting to existing chunks (for their new pages) and to new chunks.
ALTER TABLE event_metrics SET (fillfactor = 50);
ALTER TABLE event_metrics_by_dimensions SET (fillfactor = 50);
ALTER TABLE event_sketch_rollups SET (fillfactor = 50);
ALTER TABLE event_sketch_rollups_by_dimensions SET (fillfactor = 50);
