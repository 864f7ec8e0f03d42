-- Quotas, plans and alerts (SPEC §5). See docs/alerts.md.

-- The hourly rollup also keeps the sums of the first 15, 30 and 45 minutes of each
-- hour, so a range that starts or ends on a quarter hour (a billing period starting at
-- local midnight in Asia/Kolkata is 18:30 UTC) is exact from rollups instead of a scan
-- of raw events. Existing rows are filled from the raw events under them.
ALTER TABLE usage_hourly
    ADD COLUMN quantity_by_15 numeric NOT NULL DEFAULT 0,
    ADD COLUMN quantity_by_30 numeric NOT NULL DEFAULT 0,
    ADD COLUMN quantity_by_45 numeric NOT NULL DEFAULT 0;
UPDATE usage_hourly h
SET quantity_by_15 = r.q15, quantity_by_30 = r.q30, quantity_by_45 = r.q45
FROM (
    SELECT customer_id, service, b,
           coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '15 minutes'), 0) AS q15,
           coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '30 minutes'), 0) AS q30,
           coalesce(sum(quantity) FILTER (WHERE recorded_at < b + interval '45 minutes'), 0) AS q45
    FROM (SELECT *, date_bin('1 hour', recorded_at, timestamptz '2000-01-01 00:00:00+00') AS b
          FROM usage_events) e
    GROUP BY 1, 2, 3
) r
WHERE h.customer_id = r.customer_id AND h.service = r.service AND h.bucket = r.b;
ALTER TABLE usage_hourly
    ALTER COLUMN quantity_by_15 DROP DEFAULT,
    ALTER COLUMN quantity_by_30 DROP DEFAULT,
    ALTER COLUMN quantity_by_45 DROP DEFAULT;

-- A plan: a named set of limits with one mode and, optionally, its own alert
-- thresholds (percent; NULL = the installation's USAGE_ALERT_* defaults).
CREATE TABLE tally_plans (
    plan          text COLLATE "C" PRIMARY KEY,
    mode          text NOT NULL CHECK (mode IN ('soft', 'hard')),
    warning_pct   numeric CHECK (warning_pct > 0),
    critical_pct  numeric,
    exceeded_pct  numeric,
    CHECK ((warning_pct IS NULL) = (critical_pct IS NULL) AND (critical_pct IS NULL) = (exceeded_pct IS NULL)),
    CHECK (warning_pct < critical_pct AND critical_pct < exceeded_pct)
);

-- A plan's limit for one service, in the unit the service records. NULL = unlimited.
CREATE TABLE tally_plan_limits (
    plan         text COLLATE "C" NOT NULL REFERENCES tally_plans ON DELETE CASCADE,
    service      text COLLATE "C" NOT NULL,
    quota_limit  numeric CHECK (quota_limit >= 0),
    PRIMARY KEY (plan, service)
);

-- The original system's plans. storage is in GB-hours (1 GB for a 30-day month is
-- 720 GB-hours); database counts queries.
INSERT INTO tally_plans (plan, mode) VALUES
    ('free', 'hard'), ('starter', 'soft'), ('pro', 'soft'), ('enterprise', 'soft');
INSERT INTO tally_plan_limits (plan, service, quota_limit)
SELECT p.plan, s.service, CASE p.plan
        WHEN 'free' THEN s.base
        WHEN 'starter' THEN s.base * 10
        WHEN 'pro' THEN s.base * 100
    END
FROM (VALUES ('free'), ('starter'), ('pro'), ('enterprise')) AS p(plan)
CROSS JOIN (VALUES ('api', 10000), ('storage', 720), ('bandwidth', 10), ('compute', 10),
                   ('database', 1000), ('functions', 1000)) AS s(service, base);

-- A customer's billing setup: plan (optional), the day of the month periods start on
-- (31 = the month's last day where shorter) and the zone whose midnight starts them.
CREATE TABLE tally_customers (
    customer_id  text COLLATE "C" PRIMARY KEY,
    plan         text COLLATE "C" REFERENCES tally_plans ON DELETE RESTRICT,
    anchor_day   smallint NOT NULL DEFAULT 1 CHECK (anchor_day BETWEEN 1 AND 31),
    zone         text NOT NULL DEFAULT 'UTC'
);

-- A customer's own limit for a service; beats the plan's. NULL limit = unlimited.
CREATE TABLE tally_quotas (
    customer_id  text COLLATE "C" NOT NULL,
    service      text COLLATE "C" NOT NULL,
    quota_limit  numeric CHECK (quota_limit >= 0),
    mode         text NOT NULL CHECK (mode IN ('soft', 'hard')),
    PRIMARY KEY (customer_id, service)
);

-- Alerts: one row per level reached, at most once per customer, service and period
-- (the unique key makes concurrent evaluators agree). `notify` marks the row an
-- evaluation announces (its highest new level); the others are history only.
CREATE TABLE usage_alerts (
    alert_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id   text COLLATE "C" NOT NULL,
    service       text COLLATE "C" NOT NULL,
    level         text NOT NULL CHECK (level IN ('warning', 'critical', 'exceeded')),
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    usage         numeric NOT NULL,
    quota_limit   numeric NOT NULL,
    notify        boolean NOT NULL,
    triggered_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, service, period_start, level)
);
CREATE INDEX usage_alerts_triggered_at ON usage_alerts (triggered_at);

-- The outbox's other half: which sink has acknowledged which alert.
CREATE TABLE usage_alert_deliveries (
    alert_id      bigint NOT NULL REFERENCES usage_alerts ON DELETE CASCADE,
    sink          text NOT NULL,
    delivered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, alert_id)
);
