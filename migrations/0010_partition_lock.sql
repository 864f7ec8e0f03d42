-- Tally schema, part 10: creating a month's partition never fails on rows that arrive
-- in the default partition while it is being made (issue 22).
--
-- The function of 0001 moved the month's rows out of the default partition, then
-- attached the new partition, which re-checks the default. A writer that had put a row
-- of that month into the default partition and committed between the two made the
-- ATTACH fail (SQLSTATE 23514). Locking the default partition first waits for every
-- writer that holds it; the move then sees all their rows, and none can arrive before
-- the ATTACH, which takes the same lock.
CREATE OR REPLACE FUNCTION tally_ensure_month_partition(month date) RETURNS boolean
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
    LOCK TABLE usage_events_default IN ACCESS EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE %I (LIKE usage_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format(
        'WITH moved AS (DELETE FROM usage_events_default WHERE recorded_at >= %L AND recorded_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM moved', lo, hi, part);
    EXECUTE format('ALTER TABLE usage_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
    RETURN true;
END
$$;
