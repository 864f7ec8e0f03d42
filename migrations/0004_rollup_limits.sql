-- Tally schema, part 4: the largest total a rollup row may hold.

-- Tally adds totals up exactly in Rust, where a decimal holds 96 bits: at 15 fractional
-- digits the largest value is 79228162514264.337593543950335. A rollup row past it
-- could be stored but never read back exactly, so the row is refused instead: the
-- write that would push it there fails (the recorder then dead-letters that event).
-- NOT VALID: rows already stored are not rescanned (any past the limit was unreadable).
ALTER TABLE usage_hourly ADD CONSTRAINT usage_hourly_quantity_limit
    CHECK (quantity <= 79228162514264.337593543950335) NOT VALID;
ALTER TABLE usage_daily ADD CONSTRAINT usage_daily_quantity_limit
    CHECK (quantity <= 79228162514264.337593543950335) NOT VALID;
ALTER TABLE usage_hourly_total ADD CONSTRAINT usage_hourly_total_quantity_limit
    CHECK (quantity <= 79228162514264.337593543950335) NOT VALID;
