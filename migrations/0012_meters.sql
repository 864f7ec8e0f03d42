-- Tally schema, part 12: meters as OpenMeter defines them (issue 24; docs/meters.md).
--
-- A meter reads the events of one type (stored in usage_events, the type as the
-- service, the CloudEvent's data as the metadata) and aggregates a value and up to 8
-- dimensions read from the payload. Its rollups are keyed by the meter's number, the
-- customer, the bucket and the dimension values (a jsonb array in the meter's dimension order,
-- null for an absent value), and are updated in the ingest transaction, like the
-- service rollups. Buckets are UTC quarter hours and UTC days: every bucket edge of
-- every zone in use falls on a quarter hour, so any zone's windows are exact from them.

CREATE TABLE tally_meter_defs (
    meter         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- OpenMeter's id: a ULID (the creation's UUIDv7, in Crockford base 32).
    id            text COLLATE "C" NOT NULL UNIQUE,
    slug          text COLLATE "C" NOT NULL,
    event_type    text COLLATE "C" NOT NULL,
    -- The MeterSpec as JSON (tally_core::MeterSpec).
    spec          jsonb NOT NULL,
    -- backfilling: counting the events stored before it; ready; failed (state_detail says why).
    state         text NOT NULL DEFAULT 'backfilling' CHECK (state IN ('backfilling', 'ready', 'failed')),
    state_detail  text,
    backfilled    bigint NOT NULL DEFAULT 0,
    -- Stored events the backfill could not meter (a value missing or not a number, a
    -- dimension combination past the limit): they were accepted before the meter was.
    skipped       bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);
CREATE UNIQUE INDEX tally_meter_defs_slug ON tally_meter_defs (slug) WHERE deleted_at IS NULL;
CREATE INDEX tally_meter_defs_type ON tally_meter_defs (event_type) WHERE deleted_at IS NULL;

-- Each meter's distinct dimension combinations, and their count (the cardinality
-- limit is checked against it in the transaction that would add one).
CREATE TABLE tally_meter_dimensions (
    meter  bigint NOT NULL,
    dims   jsonb NOT NULL,
    PRIMARY KEY (meter, dims)
);
CREATE TABLE tally_meter_cardinality (
    meter         bigint PRIMARY KEY,
    combinations  integer NOT NULL
);

-- Count, sum, extremes and the latest value (by time, then event id) per bucket.
CREATE TABLE tally_meter_quarters (
    meter         bigint NOT NULL,
    customer_id   text COLLATE "C" NOT NULL,
    bucket        timestamptz NOT NULL,
    dims          jsonb NOT NULL,
    events        bigint NOT NULL,
    total         numeric NOT NULL,
    lo            numeric,
    hi            numeric,
    latest_at     timestamptz,
    latest_id     uuid,
    latest_value  numeric,
    PRIMARY KEY (meter, customer_id, bucket, dims)
) WITH (fillfactor = 70);

CREATE TABLE tally_meter_days (LIKE tally_meter_quarters INCLUDING ALL) WITH (fillfactor = 70);

-- UNIQUE_COUNT: the distinct values per bucket (quarter hour, UTC day, UTC month),
-- counted distinct across a range's buckets: exact over any range.
CREATE TABLE tally_meter_distinct_quarters (
    meter        bigint NOT NULL,
    customer_id  text COLLATE "C" NOT NULL,
    bucket       timestamptz NOT NULL,
    dims         jsonb NOT NULL,
    value        text COLLATE "C" NOT NULL,
    PRIMARY KEY (meter, customer_id, bucket, dims, value)
);
CREATE TABLE tally_meter_distinct_days (LIKE tally_meter_distinct_quarters INCLUDING ALL);
CREATE TABLE tally_meter_distinct_months (LIKE tally_meter_distinct_quarters INCLUDING ALL);

-- TIME_WEIGHTED: the samples themselves (a gauge's integral over a window needs the
-- sample in force at its start, wherever that was).
CREATE TABLE tally_meter_samples (
    meter        bigint NOT NULL,
    customer_id  text COLLATE "C" NOT NULL,
    dims         jsonb NOT NULL,
    at           timestamptz NOT NULL,
    event_id     uuid NOT NULL,
    value        numeric NOT NULL,
    PRIMARY KEY (meter, customer_id, dims, at, event_id)
);
