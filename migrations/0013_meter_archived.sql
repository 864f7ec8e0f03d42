-- Tally schema, part 13: what a meter's backfill could not count because it was
-- archived (issue 24; docs/meters.md, "Backfill"). The raw events of a complete archive
-- are in its file, not in usage_events: a meter made (or restarted) after the archive
-- does not count them, and says how many there are, so the operator can restore the
-- archive and restart the meter.
ALTER TABLE tally_meter_defs ADD COLUMN archived bigint NOT NULL DEFAULT 0;
