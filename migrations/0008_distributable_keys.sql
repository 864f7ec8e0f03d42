-- Keys that also hold on a distributed database (Citus, docs/scaling.md): every primary
-- and unique key of a table distributed by customer_id must include customer_id, and a
-- foreign key between two such tables must include it too. On one node nothing changes
-- in meaning: alert ids and dead-letter ids stay unique by their identity sequences.
ALTER TABLE usage_alert_deliveries ADD COLUMN customer_id text COLLATE "C";
UPDATE usage_alert_deliveries d SET customer_id = a.customer_id
FROM usage_alerts a WHERE a.alert_id = d.alert_id;
ALTER TABLE usage_alert_deliveries ALTER COLUMN customer_id SET NOT NULL;
ALTER TABLE usage_alert_deliveries DROP CONSTRAINT usage_alert_deliveries_alert_id_fkey;
ALTER TABLE usage_alert_deliveries DROP CONSTRAINT usage_alert_deliveries_pkey;
ALTER TABLE usage_alerts DROP CONSTRAINT usage_alerts_pkey;
ALTER TABLE usage_alerts ADD PRIMARY KEY (customer_id, alert_id);
ALTER TABLE usage_alert_deliveries ADD PRIMARY KEY (customer_id, sink, alert_id);
ALTER TABLE usage_alert_deliveries ADD FOREIGN KEY (customer_id, alert_id)
    REFERENCES usage_alerts (customer_id, alert_id) ON DELETE CASCADE;

-- Distributed tables colocate only when their distribution columns have the same type
-- and collation: every other customer_id column is COLLATE "C".
ALTER TABLE usage_dead_letters ALTER COLUMN customer_id TYPE text COLLATE "C";
ALTER TABLE usage_dead_letters DROP CONSTRAINT usage_dead_letters_pkey;
ALTER TABLE usage_dead_letters ADD PRIMARY KEY (customer_id, id);
