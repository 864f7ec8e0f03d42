//! `verify`'s statement: a rollup recomputed from the raw events and the archives'
//! totals, by the rollup's own description.

use super::{ORIGIN, Rollup, list, quarter_of_bucket};

impl Rollup {
    /// Counts the buckets where the rollup differs from the raw events (missing rows on
    /// either side included). Table, key and width come from [`ROLLUPS`], never from
    /// input.
    pub(crate) fn verify_sql(&self) -> String {
        let Rollup { table, width, .. } = self;
        let key = &self.key_names();
        // The value columns of the raw events, of the archived totals and of the
        // rollup (each merged by its rule), and the test that they agree.
        let values = || self.values().map(|v| (v.name, v.merge.aggregate()));
        let raw_q = list(
            self.values()
                .map(|v| format!("{} AS {}", v.of_events(&quarter_of_bucket), v.name)),
        );
        let archived_q = list(values().map(|(col, merge)| format!("{merge}({col})")));
        // The raw side's parts and the rollup's rows, each merged by the rule.
        let merged_q = list(values().map(|(col, merge)| format!("{merge}({col}) AS {col}")));
        let differ_q = values()
            .map(|(col, _)| format!("raw.{col} IS DISTINCT FROM r.{col}"))
            .collect::<Vec<_>>()
            .join(" OR ");
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
                SELECT {key}, coalesce(span.lo, e.b) AS bucket, {raw_q}
                FROM (SELECT *, date_bin('{width}', recorded_at, {ORIGIN}) AS b FROM usage_events) e
                LEFT JOIN span ON e.b >= span.lo AND e.b < span.hi
                GROUP BY {key}, coalesce(span.lo, e.b)
                UNION ALL
                SELECT {key}, span.lo, {archived_q}
                FROM usage_archived_totals JOIN numbered USING (archive_id) JOIN span USING (n)
                GROUP BY {key}, span.lo)
             , raw AS (
                SELECT {key}, bucket, {merged_q}
                FROM ev GROUP BY {key}, bucket)
             , r AS (
                SELECT {key}, coalesce(span.lo, t.bucket) AS bucket, {merged_q}
                FROM {table} t LEFT JOIN span ON t.bucket >= span.lo AND t.bucket < span.hi
                GROUP BY {key}, coalesce(span.lo, t.bucket))
             SELECT count(*) FROM raw FULL JOIN r USING ({key}, bucket)
             WHERE {differ_q}"
        )
    }
}
