-- Tally schema, part 9: quarter-hour detail in the hourly rollups (issue 11).
--
-- Every bucket edge of a zone with a half- or quarter-hour offset (Asia/Kolkata,
-- Asia/Kathmandu, Australia/Adelaide, America/St_Johns, Asia/Tehran) cuts a UTC hour
-- on a quarter hour. With the count and sum of each hour's first 15, 30 and 45 minutes
-- (cumulative: they add like the hour's) and each quarter's minimum and maximum (NULL
-- for an empty quarter: least/greatest skip it), such a part of an hour is exact from
-- the rollup instead of a scan of raw events. The all-customer rollup gets the same.
--
-- NULL in events_by_15 means "not known": rows whose raw events were archived before
-- this migration cannot be filled. NULL + x stays NULL, so such a row stays unknown,
-- and readers go to raw events for it (as every reader did before).
ALTER TABLE usage_hourly
    ADD COLUMN events_by_15 bigint, ADD COLUMN events_by_30 bigint, ADD COLUMN events_by_45 bigint,
    ADD COLUMN min_00 numeric(28,15), ADD COLUMN min_15 numeric(28,15),
    ADD COLUMN min_30 numeric(28,15), ADD COLUMN min_45 numeric(28,15),
    ADD COLUMN max_00 numeric(28,15), ADD COLUMN max_15 numeric(28,15),
    ADD COLUMN max_30 numeric(28,15), ADD COLUMN max_45 numeric(28,15);

ALTER TABLE usage_hourly_total
    ADD COLUMN quantity_by_15 numeric, ADD COLUMN quantity_by_30 numeric, ADD COLUMN quantity_by_45 numeric,
    ADD COLUMN events_by_15 bigint, ADD COLUMN events_by_30 bigint, ADD COLUMN events_by_45 bigint,
    ADD COLUMN min_00 numeric(28,15), ADD COLUMN min_15 numeric(28,15),
    ADD COLUMN min_30 numeric(28,15), ADD COLUMN min_45 numeric(28,15),
    ADD COLUMN max_00 numeric(28,15), ADD COLUMN max_15 numeric(28,15),
    ADD COLUMN max_30 numeric(28,15), ADD COLUMN max_45 numeric(28,15);

-- What `verify` compares the new columns with for archived events.
ALTER TABLE usage_archived_totals
    ADD COLUMN events_by_15 bigint, ADD COLUMN events_by_30 bigint, ADD COLUMN events_by_45 bigint,
    ADD COLUMN min_00 numeric(28,15), ADD COLUMN min_15 numeric(28,15),
    ADD COLUMN min_30 numeric(28,15), ADD COLUMN min_45 numeric(28,15),
    ADD COLUMN max_00 numeric(28,15), ADD COLUMN max_15 numeric(28,15),
    ADD COLUMN max_30 numeric(28,15), ADD COLUMN max_45 numeric(28,15);

-- Existing rows, from the raw events under them.
UPDATE usage_hourly h
SET events_by_15 = r.e15, events_by_30 = r.e30, events_by_45 = r.e45,
    min_00 = r.min_00, min_15 = r.min_15, min_30 = r.min_30, min_45 = r.min_45,
    max_00 = r.max_00, max_15 = r.max_15, max_30 = r.max_30, max_45 = r.max_45
FROM (
    SELECT customer_id, service, b,
           count(*) FILTER (WHERE m < 15) AS e15, count(*) FILTER (WHERE m < 30) AS e30,
           count(*) FILTER (WHERE m < 45) AS e45,
           min(quantity) FILTER (WHERE m < 15) AS min_00, min(quantity) FILTER (WHERE m >= 15 AND m < 30) AS min_15,
           min(quantity) FILTER (WHERE m >= 30 AND m < 45) AS min_30, min(quantity) FILTER (WHERE m >= 45) AS min_45,
           max(quantity) FILTER (WHERE m < 15) AS max_00, max(quantity) FILTER (WHERE m >= 15 AND m < 30) AS max_15,
           max(quantity) FILTER (WHERE m >= 30 AND m < 45) AS max_30, max(quantity) FILTER (WHERE m >= 45) AS max_45
    FROM (SELECT customer_id, service, quantity,
                 date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00') AS b,
                 extract(epoch FROM recorded_at - date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00')) / 60 AS m
          FROM usage_events) e
    GROUP BY 1, 2, 3
) r
WHERE h.customer_id = r.customer_id AND h.service = r.service AND h.bucket = r.b;

-- The all-customer rollup: raw events say nothing about lanes, so each (service, hour)
-- is folded into its lowest lane first, which then takes the detail.
UPDATE usage_hourly_total t
SET events = m.events, quantity = m.quantity, min_quantity = m.lo, max_quantity = m.hi
FROM (SELECT service, bucket, min(lane) AS lane, sum(events) AS events, sum(quantity) AS quantity,
             min(min_quantity) AS lo, max(max_quantity) AS hi
      FROM usage_hourly_total GROUP BY 1, 2) m
WHERE t.service = m.service AND t.bucket = m.bucket AND t.lane = m.lane;
DELETE FROM usage_hourly_total t
USING (SELECT service, bucket, min(lane) AS lane FROM usage_hourly_total GROUP BY 1, 2) m
WHERE t.service = m.service AND t.bucket = m.bucket AND t.lane <> m.lane;
UPDATE usage_hourly_total t
SET quantity_by_15 = r.q15, quantity_by_30 = r.q30, quantity_by_45 = r.q45,
    events_by_15 = r.e15, events_by_30 = r.e30, events_by_45 = r.e45,
    min_00 = r.min_00, min_15 = r.min_15, min_30 = r.min_30, min_45 = r.min_45,
    max_00 = r.max_00, max_15 = r.max_15, max_30 = r.max_30, max_45 = r.max_45
FROM (
    SELECT service, b,
           coalesce(sum(quantity) FILTER (WHERE m < 15), 0) AS q15,
           coalesce(sum(quantity) FILTER (WHERE m < 30), 0) AS q30,
           coalesce(sum(quantity) FILTER (WHERE m < 45), 0) AS q45,
           count(*) FILTER (WHERE m < 15) AS e15, count(*) FILTER (WHERE m < 30) AS e30,
           count(*) FILTER (WHERE m < 45) AS e45,
           min(quantity) FILTER (WHERE m < 15) AS min_00, min(quantity) FILTER (WHERE m >= 15 AND m < 30) AS min_15,
           min(quantity) FILTER (WHERE m >= 30 AND m < 45) AS min_30, min(quantity) FILTER (WHERE m >= 45) AS min_45,
           max(quantity) FILTER (WHERE m < 15) AS max_00, max(quantity) FILTER (WHERE m >= 15 AND m < 30) AS max_15,
           max(quantity) FILTER (WHERE m >= 30 AND m < 45) AS max_30, max(quantity) FILTER (WHERE m >= 45) AS max_45
    FROM (SELECT service, quantity,
                 date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00') AS b,
                 extract(epoch FROM recorded_at - date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00')) / 60 AS m
          FROM usage_events) e
    GROUP BY 1, 2
) r
WHERE t.service = r.service AND t.bucket = r.b;
