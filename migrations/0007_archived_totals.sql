-- Archived totals per archive, customer and service instead of per hour (docs/archive.md,
-- docs/performance.md): writing 703 436 hourly rows took 4.4 s of a 9 s archive of 1M
-- events; these are computed while the rows stream to the file and are a few thousand.
-- `verify` compares them with the rollups over each span of archived buckets.
CREATE TABLE usage_archived_totals (
    archive_id      bigint NOT NULL,  -- of usage_archives; no foreign key (only the archive code writes both)
    customer_id     text COLLATE "C" NOT NULL,
    service         text COLLATE "C" NOT NULL,
    events          bigint NOT NULL,
    quantity        numeric NOT NULL,
    min_quantity    numeric(28,15) NOT NULL,
    max_quantity    numeric(28,15) NOT NULL,
    -- Sums of the quantities recorded in the first 15, 30 and 45 minutes of their UTC
    -- hour: what the hourly rollup's quantity_by_* columns add up to.
    quantity_by_15  numeric NOT NULL,
    quantity_by_30  numeric NOT NULL,
    quantity_by_45  numeric NOT NULL,
    PRIMARY KEY (archive_id, customer_id, service)
);

INSERT INTO usage_archived_totals
SELECT archive_id, customer_id, service, sum(events), sum(quantity), min(min_quantity),
       max(max_quantity), sum(quantity_by_15), sum(quantity_by_30), sum(quantity_by_45)
FROM usage_archived_hourly
GROUP BY archive_id, customer_id, service;

DROP TABLE usage_archived_hourly;
