-- Tally schema, part 1: meters, raw events (time-partitioned), the dedupe key table
-- and the rollups maintained on write. See docs/architecture.md ("Schema").

-- The services an installation knows; user-defined meters are added as rows.
CREATE TABLE tally_meters (
    service   text COLLATE "C" PRIMARY KEY,
    unit      text NOT NULL,
    built_in  boolean NOT NULL DEFAULT false
);
INSERT INTO tally_meters (service, unit, built_in) VALUES
    ('api', 'requests', true),
    ('storage', 'GB-hours', true),
    ('bandwidth', 'GB', true),
    ('compute', 'CPU-hours', true),
    ('database', 'queries', true),
    ('functions', 'invocations', true);

-- Raw events. No index: every index costs ingest, and the rollups carry the queries.
-- Monthly range partitions (UTC) are created ahead by tally_ensure_month_partition;
-- the default partition catches anything outside them and is monitored.
CREATE TABLE usage_events (
    event_id     uuid NOT NULL,
    customer_id  text COLLATE "C" NOT NULL,
    service      text COLLATE "C" NOT NULL,
    quantity     numeric(28,15) NOT NULL CHECK (quantity >= 0),
    recorded_at  timestamptz NOT NULL,
    metadata     jsonb NOT NULL
) PARTITION BY RANGE (recorded_at);

CREATE TABLE usage_events_default PARTITION OF usage_events DEFAULT;

-- Exactly-once: one row per (event id, customer) ever accepted. A unique key on the
-- partitioned table would have to include recorded_at, which would let a replay with
-- another timestamp through; this table enforces the key globally. Event ids are
-- UUIDv7 (time-ordered) when Tally makes them, so inserts stay at the right edge.
CREATE TABLE usage_event_keys (
    event_id     uuid NOT NULL,
    customer_id  text COLLATE "C" NOT NULL,
    PRIMARY KEY (event_id, customer_id)
);

-- Rollups, updated in the same transaction as the events they summarise. Buckets are
-- UTC hours and UTC days. fillfactor leaves room on each page so the frequent updates
-- are HOT (no index churn).
CREATE TABLE usage_hourly (
    customer_id   text COLLATE "C" NOT NULL,
    service       text COLLATE "C" NOT NULL,
    bucket        timestamptz NOT NULL,
    events        bigint NOT NULL,
    quantity      numeric NOT NULL,
    min_quantity  numeric(28,15) NOT NULL,
    max_quantity  numeric(28,15) NOT NULL,
    PRIMARY KEY (customer_id, service, bucket)
) WITH (fillfactor = 70);

CREATE TABLE usage_daily (
    customer_id   text COLLATE "C" NOT NULL,
    service       text COLLATE "C" NOT NULL,
    bucket        timestamptz NOT NULL,
    events        bigint NOT NULL,
    quantity      numeric NOT NULL,
    min_quantity  numeric(28,15) NOT NULL,
    max_quantity  numeric(28,15) NOT NULL,
    PRIMARY KEY (customer_id, service, bucket)
) WITH (fillfactor = 70);

-- Creates the monthly partition holding `month` (UTC) unless it exists. Rows already
-- caught by the default partition for that month move into it, so creating a
-- partition late never fails and never loses an event. Returns true if it created one.
CREATE FUNCTION tally_ensure_month_partition(month date) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    lo    timestamptz := date_trunc('month', month::timestamp) AT TIME ZONE 'UTC';
    hi    timestamptz := (date_trunc('month', month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    part  text := 'usage_events_' || to_char(month, 'YYYY_MM');
BEGIN
    -- Serialise creators; the check below then sees any partition made meanwhile.
    PERFORM pg_advisory_xact_lock(hashtext('tally_partitions'));
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'usage_events'::regclass AND c.relname = part) THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format(
        'WITH moved AS (DELETE FROM usage_events_default WHERE recorded_at >= %L AND recorded_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    RETURN true;
END
$$;
