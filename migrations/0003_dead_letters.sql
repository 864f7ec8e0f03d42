-- Tally schema, part 3: events the database refused for a permanent reason.

-- The recorder retries transient failures (connection lost, server restarting) for as
-- long as they last. A permanent failure (a value PostgreSQL refuses) is narrowed down
-- to the events that cause it; they land here with the error, so nothing recorded is
-- lost silently and an operator can fix and re-import them. Plain text columns: the
-- values here are the ones a typed column refused.
CREATE TABLE usage_dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid NOT NULL,
    customer_id  text NOT NULL,
    service      text NOT NULL,
    quantity     numeric NOT NULL,
    recorded_at  timestamptz NOT NULL,
    metadata     text NOT NULL,
    error        text NOT NULL,
    sqlstate     text,
    failed_at    timestamptz NOT NULL DEFAULT now()
);
