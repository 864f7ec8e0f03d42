//! The rollup tables: what the write path upserts and `verify` recomputes, in one list.
//!
//! Every rollup row follows the one merge rule of [`tally_core::Totals::merge`]:
//! counts and sums add, minimum and maximum widen. The write path's `ON CONFLICT`
//! clause (`merge!` in `ingest.rs`) and [`Rollup::verify_sql`] both apply it, and
//! `verify` compares each rollup with the raw events under it.

/// One rollup table.
pub(crate) struct Rollup {
    /// Table name.
    pub(crate) table: &'static str,
    /// Key columns besides the bucket.
    pub(crate) key: &'static str,
    /// Bucket width, as a `date_bin` interval on the UTC origin.
    pub(crate) width: &'static str,
    /// Whether rows also hold their hour's quarter-hour detail ([`QUARTER_COLUMNS`]).
    pub(crate) quarters: bool,
}

/// UTC origin of every bucket: `date_bin` on it is plain arithmetic.
pub(crate) const ORIGIN: &str = "timestamptz '2000-01-01 00:00:00+00'";

/// Every rollup. The all-customer table has several rows (lanes) per key and bucket:
/// merged by the same rule, they must equal the raw events.
pub(crate) const ROLLUPS: [Rollup; 3] = [
    Rollup {
        table: "usage_hourly",
        key: "customer_id, service",
        width: "1 hour",
        quarters: true,
    },
    Rollup {
        table: "usage_daily",
        key: "customer_id, service",
        width: "1 day",
        quarters: false,
    },
    Rollup {
        table: "usage_hourly_total",
        key: "service",
        width: "1 hour",
        quarters: true,
    },
];

/// The quarter-hour detail columns, how each is computed from events and over which
/// minutes `[from, to)` of its hour: `sum` and `count` over the first 15, 30 or 45
/// minutes, `min` and `max` over one quarter. The same columns and order as
/// `quarter_columns!` in `ingest.rs`.
pub(crate) const QUARTER_COLUMNS: [(&str, &str, u32, u32); 14] = [
    ("quantity_by_15", "sum", 0, 15),
    ("quantity_by_30", "sum", 0, 30),
    ("quantity_by_45", "sum", 0, 45),
    ("events_by_15", "count", 0, 15),
    ("events_by_30", "count", 0, 30),
    ("events_by_45", "count", 0, 45),
    ("min_00", "min", 0, 15),
    ("min_15", "min", 15, 30),
    ("min_30", "min", 30, 45),
    ("min_45", "min", 45, 60),
    ("max_00", "max", 0, 15),
    ("max_15", "max", 15, 30),
    ("max_30", "max", 30, 45),
    ("max_45", "max", 45, 60),
];

impl Rollup {
    /// Counts the buckets where the rollup differs from the raw events (missing rows on
    /// either side included). Table, key and width come from [`ROLLUPS`], never from
    /// input.
    pub(crate) fn verify_sql(&self) -> String {
        let Rollup {
            table,
            key,
            width,
            quarters,
        } = self;
        let (raw_q, archived_q, sum_q, r_q, differ_q) = if *quarters {
            // The quarter-hour detail (migrations 0005 and 0009) of the raw events, of
            // the archived totals and of the rollup, and the test that they agree.
            let m = |lo: u32, hi: u32| match (lo, hi) {
                (0, hi) => format!("recorded_at < b + interval '{hi} minutes'"),
                (lo, 60) => format!("recorded_at >= b + interval '{lo} minutes'"),
                (lo, hi) => format!(
                    "recorded_at >= b + interval '{lo} minutes' AND recorded_at < b + interval '{hi} minutes'"
                ),
            };
            let (mut raw, mut archived, mut sum, mut r, mut differ) = (
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            );
            for (col, agg, lo, hi) in QUARTER_COLUMNS {
                let raw_agg = match agg {
                    "sum" => format!("coalesce(sum(quantity) FILTER (WHERE {}), 0)", m(lo, hi)),
                    "count" => format!("count(*) FILTER (WHERE {})", m(lo, hi)),
                    f => format!("{f}(quantity) FILTER (WHERE {})", m(lo, hi)),
                };
                let add = if matches!(agg, "sum" | "count") {
                    "sum"
                } else {
                    agg
                };
                raw.push_str(&format!(", {raw_agg} AS {col}"));
                archived.push_str(&format!(", {add}({col})"));
                sum.push_str(&format!(", {add}({col}) AS {col}"));
                r.push_str(&format!(", {add}({col}) AS {col}"));
                differ.push_str(&format!(" OR raw.{col} IS DISTINCT FROM r.{col}"));
            }
            (raw, archived, sum, r, differ)
        } else {
            Default::default()
        };
        // What the rollups were built from: the raw events still here, plus what
        // complete archives took away. Archives keep totals per customer and service,
        // so a bucket that holds archived events is compared as part of its span: the
        // complete archives' ranges, widened to whole buckets and merged where they
        // touch (`span`), are each one unit of comparison; every other bucket is its
        // own.
        format!(
            "WITH arch AS (
                SELECT archive_id, date_bin('{width}', range_from, {ORIGIN}) AS lo,
                       date_bin('{width}', range_to - interval '1 microsecond', {ORIGIN}) + interval '{width}' AS hi
                FROM usage_archives WHERE state = 'complete')
             , starts AS (
                SELECT archive_id, lo, hi,
                       CASE WHEN lo <= max(hi) OVER (ORDER BY lo, hi ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                            THEN 0 ELSE 1 END AS new_span
                FROM arch)
             , numbered AS (
                SELECT archive_id, lo, hi, sum(new_span) OVER (ORDER BY lo, hi ROWS UNBOUNDED PRECEDING) AS n
                FROM starts)
             , span AS (SELECT n, min(lo) AS lo, max(hi) AS hi FROM numbered GROUP BY n)
             , ev AS (
                SELECT {key}, coalesce(span.lo, e.b) AS bucket,
                       count(*) AS events, sum(quantity) AS quantity, min(quantity) AS lo, max(quantity) AS hi
                       {raw_q}
                FROM (SELECT *, date_bin('{width}', recorded_at, {ORIGIN}) AS b FROM usage_events) e
                LEFT JOIN span ON e.b >= span.lo AND e.b < span.hi
                GROUP BY {key}, coalesce(span.lo, e.b)
                UNION ALL
                SELECT {key}, span.lo,
                       sum(events), sum(quantity), min(min_quantity), max(max_quantity) {archived_q}
                FROM usage_archived_totals JOIN numbered USING (archive_id) JOIN span USING (n)
                GROUP BY {key}, span.lo)
             , raw AS (
                SELECT {key}, bucket, sum(events) AS events, sum(quantity) AS quantity,
                       min(lo) AS lo, max(hi) AS hi {sum_q}
                FROM ev GROUP BY {key}, bucket)
             , r AS (
                SELECT {key}, coalesce(span.lo, t.bucket) AS bucket, sum(events) AS events,
                       sum(quantity) AS quantity, min(min_quantity) AS lo, max(max_quantity) AS hi {r_q}
                FROM {table} t LEFT JOIN span ON t.bucket >= span.lo AND t.bucket < span.hi
                GROUP BY {key}, coalesce(span.lo, t.bucket))
             SELECT count(*) FROM raw FULL JOIN r USING ({key}, bucket)
             WHERE raw.events IS DISTINCT FROM r.events OR raw.quantity IS DISTINCT FROM r.quantity
                OR raw.lo IS DISTINCT FROM r.lo OR raw.hi IS DISTINCT FROM r.hi{differ_q}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ingest::LANES, migrate::MIGRATIONS};

    #[test]
    fn the_schema_allows_exactly_the_lanes_the_write_path_uses() {
        let check = format!("CHECK (lane BETWEEN 0 AND {})", LANES - 1);
        assert!(
            MIGRATIONS.iter().any(|m| m.sql.contains(&check)),
            "no migration has {check}"
        );
    }

    #[test]
    fn every_rollup_table_is_in_the_schema() {
        for r in &ROLLUPS {
            let ddl = format!("CREATE TABLE {} (", r.table);
            assert!(MIGRATIONS.iter().any(|m| m.sql.contains(&ddl)), "{ddl}");
        }
    }
}
