-- Archives (SPEC §6): raw events moved to files, rollups and dedupe keys kept. See
-- docs/archive.md.

-- The ledger: one row per archive file. `writing` until the transaction that deletes
-- the rows commits with `complete`; a run that died leaves `writing`, which the next
-- run marks `abandoned` (its rows were never deleted). `restored` after `restore`.
CREATE TABLE usage_archives (
    archive_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    range_from    timestamptz NOT NULL,
    range_to      timestamptz NOT NULL,
    file_name     text NOT NULL UNIQUE,
    state         text NOT NULL CHECK (state IN ('writing', 'complete', 'abandoned', 'restored')),
    events        bigint,
    quantity      numeric,
    sha256        text,
    manifest      jsonb,
    keys_kept     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    CHECK (range_from < range_to)
);

-- What each complete archive holds, per customer, service and UTC hour, in the hourly
-- rollup's shape: `verify` compares the rollups with raw events plus these, exactly.
CREATE TABLE usage_archived_hourly (
    archive_id      bigint NOT NULL,  -- of usage_archives; no foreign key: checking it took 1.8 s of an 11 s archive of 1M events
    customer_id     text COLLATE "C" NOT NULL,
    service         text COLLATE "C" NOT NULL,
    bucket          timestamptz NOT NULL,
    events          bigint NOT NULL,
    quantity        numeric NOT NULL,
    min_quantity    numeric(28,15) NOT NULL,
    max_quantity    numeric(28,15) NOT NULL,
    quantity_by_15  numeric NOT NULL,
    quantity_by_30  numeric NOT NULL,
    quantity_by_45  numeric NOT NULL,
    PRIMARY KEY (archive_id, customer_id, service, bucket)
);
