-- Tally schema, part 11: each dedupe key keeps a digest of its event's payload
-- (issue 22), so a replay of an event id with a different payload is a conflict,
-- reported, instead of a duplicate silently counted once.
--
-- `tally_core::UsageEvent::digest`: the first 8 bytes of a SHA-256 of service,
-- quantity and metadata (not the time, which a retrying receiver stamps anew). NULL
-- for keys stored before this migration (and kept for archived events): their payload
-- is not known here, and a replay of one is taken as a duplicate, as before.
ALTER TABLE usage_event_keys ADD COLUMN digest bigint;
