-- Tally schema, part 2: what the analytics queries need.

-- Sub-hour edges of a range (and zones with half- or quarter-hour offsets) are read from
-- raw events by time. Events arrive roughly in time order, so a BRIN index finds a time
-- slice for almost nothing at ingest (a B-tree here would cost every insert).
CREATE INDEX usage_events_recorded_at ON usage_events USING brin (recorded_at) WITH (pages_per_range = 16);

-- Usage of all customers added up, per service and UTC hour, so any all-customer
-- report over a month reads a few thousand rows. Updated in the ingest transaction like
-- the other rollups (last in the lock order). Every writer would update the same few
-- rows, waiting for each other's commits, so each writer has a lane of its own (0-7);
-- readers add the lanes up.
CREATE TABLE usage_hourly_total (
    service       text COLLATE "C" NOT NULL,
    bucket        timestamptz NOT NULL,
    lane          smallint NOT NULL CHECK (lane BETWEEN 0 AND 7),
    events        bigint NOT NULL,
    quantity      numeric NOT NULL,
    min_quantity  numeric(28,15) NOT NULL,
    max_quantity  numeric(28,15) NOT NULL,
    PRIMARY KEY (service, bucket, lane)
) WITH (fillfactor = 70);

-- Events written before this migration are in usage_hourly already.
INSERT INTO usage_hourly_total (service, bucket, lane, events, quantity, min_quantity, max_quantity)
SELECT service, bucket, 0, sum(events), sum(quantity), min(min_quantity), max(max_quantity)
FROM usage_hourly GROUP BY service, bucket;
