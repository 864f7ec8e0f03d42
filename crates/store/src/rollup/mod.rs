//! The one description of a rollup: its tables, key columns, value columns, quarter-hour
//! detail and merge rule. Every statement that writes, reads, verifies or archives a
//! rollup is generated from it (the write path's upserts in `ingest/sql.rs`, the reads
//! in `reads.rs`, period usage in `quotas/`, the archive's totals, `verify` in
//! [`verify`]); a test holds it against the migrations. Adding a key or value column
//! is an edit here (and a migration).
//!
//! Every rollup row follows the merge rule of [`tally_core::Totals::merge`]: counts and
//! sums add, minimum and maximum widen ([`Merge`]).

mod verify;

/// How a stored value absorbs another (an `ON CONFLICT` update, or rows added up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    Add,
    Least,
    Greatest,
}

impl Merge {
    /// The SQL aggregate that merges many rows' values by this rule.
    pub(crate) fn aggregate(self) -> &'static str {
        match self {
            Merge::Add => "sum",
            Merge::Least => "min",
            Merge::Greatest => "max",
        }
    }

    /// `a` and `b` merged, in SQL.
    fn of(self, a: &str, b: &str) -> String {
        match self {
            Merge::Add => format!("{a} + {b}"),
            Merge::Least => format!("least({a}, {b})"),
            Merge::Greatest => format!("greatest({a}, {b})"),
        }
    }
}

/// How a value column is computed from raw events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Agg {
    Count,
    Sum,
    Min,
    Max,
}

/// A value column: its name, SQL type, merge rule, how raw events give it and, for the
/// quarter-hour detail, over which minutes `[lo, hi)` of its UTC hour.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Value {
    pub(crate) name: &'static str,
    pub(crate) ty: &'static str,
    pub(crate) merge: Merge,
    pub(crate) agg: Agg,
    pub(crate) minutes: Option<(u32, u32)>,
}

const fn value(
    name: &'static str,
    ty: &'static str,
    agg: Agg,
    minutes: Option<(u32, u32)>,
) -> Value {
    let merge = match agg {
        Agg::Count | Agg::Sum => Merge::Add,
        Agg::Min => Merge::Least,
        Agg::Max => Merge::Greatest,
    };
    Value {
        name,
        ty,
        merge,
        agg,
        minutes,
    }
}

/// The value columns of every rollup row, in stored order.
pub(crate) const VALUES: [Value; 4] = [
    value("events", "int8", Agg::Count, None),
    value("quantity", "numeric", Agg::Sum, None),
    value("min_quantity", "numeric", Agg::Min, None),
    value("max_quantity", "numeric", Agg::Max, None),
];

/// The hourly rollups' quarter-hour detail (migrations 0005 and 0009): the count and sum
/// of the hour's first 15, 30 and 45 minutes, and each quarter's minimum and maximum. A
/// range cut on a quarter hour (every bucket edge in Asia/Kolkata) is then exact from
/// rollups. The order is [`tally_core::QuarterColumns`]'.
pub(crate) const QUARTERS: [Value; 14] = [
    value("quantity_by_15", "numeric", Agg::Sum, Some((0, 15))),
    value("quantity_by_30", "numeric", Agg::Sum, Some((0, 30))),
    value("quantity_by_45", "numeric", Agg::Sum, Some((0, 45))),
    value("events_by_15", "int8", Agg::Count, Some((0, 15))),
    value("events_by_30", "int8", Agg::Count, Some((0, 30))),
    value("events_by_45", "int8", Agg::Count, Some((0, 45))),
    value("min_00", "numeric", Agg::Min, Some((0, 15))),
    value("min_15", "numeric", Agg::Min, Some((15, 30))),
    value("min_30", "numeric", Agg::Min, Some((30, 45))),
    value("min_45", "numeric", Agg::Min, Some((45, 60))),
    value("max_00", "numeric", Agg::Max, Some((0, 15))),
    value("max_15", "numeric", Agg::Max, Some((15, 30))),
    value("max_30", "numeric", Agg::Max, Some((30, 45))),
    value("max_45", "numeric", Agg::Max, Some((45, 60))),
];

impl Value {
    /// This column from raw events with a `quantity`; `within(lo, hi)` is the SQL
    /// condition "in minutes `[lo, hi)` of the bucket's hour" in the caller's terms.
    pub(crate) fn of_events(&self, within: &dyn Fn(u32, u32) -> String) -> String {
        let filter = self
            .minutes
            .map(|(lo, hi)| format!(" FILTER (WHERE {})", within(lo, hi)));
        let filter = filter.as_deref().unwrap_or("");
        match (self.agg, self.minutes) {
            (Agg::Count, _) => format!("count(*){filter}"),
            // A sum over no event of the hour's first minutes is 0, not NULL.
            (Agg::Sum, Some(_)) => format!("coalesce(sum(quantity){filter}, 0)"),
            (Agg::Sum, None) => "sum(quantity)".to_owned(),
            (Agg::Min, _) => format!("min(quantity){filter}"),
            (Agg::Max, _) => format!("max(quantity){filter}"),
        }
    }
}

/// A key column besides the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyColumn {
    pub(crate) name: &'static str,
    pub(crate) ty: &'static str,
}

pub(crate) const CUSTOMER: KeyColumn = KeyColumn {
    name: "customer_id",
    ty: "text",
};
pub(crate) const SERVICE: KeyColumn = KeyColumn {
    name: "service",
    ty: "text",
};

/// One rollup table.
#[derive(Debug)]
pub(crate) struct Rollup {
    pub(crate) table: &'static str,
    /// Key columns before the bucket.
    pub(crate) key: &'static [KeyColumn],
    /// Bucket width, as a `date_bin` interval on the UTC [`ORIGIN`].
    pub(crate) width: &'static str,
    /// Whether rows also hold their hour's quarter-hour detail ([`QUARTERS`]).
    pub(crate) quarters: bool,
    /// Whether the key ends with the writer's lane (`ingest::Lane`): several rows per
    /// key and bucket, merged by the same rule when read.
    pub(crate) lane: bool,
}

/// UTC origin of every bucket: `date_bin` on it is plain arithmetic, unlike
/// `date_trunc(…, 'UTC')`, which converts time zones row by row.
pub(crate) const ORIGIN: &str = "timestamptz '2000-01-01 00:00:00+00'";

/// Per customer, service and UTC hour, with quarter-hour detail.
pub(crate) const HOURLY: Rollup = Rollup {
    table: "usage_hourly",
    key: &[CUSTOMER, SERVICE],
    width: "1 hour",
    quarters: true,
    lane: false,
};

/// Per customer, service and UTC day.
pub(crate) const DAILY: Rollup = Rollup {
    table: "usage_daily",
    key: &[CUSTOMER, SERVICE],
    width: "1 day",
    quarters: false,
    lane: false,
};

/// All customers, per service and UTC hour, one row per writer lane.
pub(crate) const ALL_CUSTOMERS: Rollup = Rollup {
    table: "usage_hourly_total",
    key: &[SERVICE],
    width: "1 hour",
    quarters: true,
    lane: true,
};

/// Every rollup, in the lock order of the write path (hourly, daily, all customers).
pub(crate) const ROLLUPS: [&Rollup; 3] = [&HOURLY, &DAILY, &ALL_CUSTOMERS];

/// A list of names or expressions joined by ", ".
pub(crate) fn list<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> String {
    let items: Vec<S> = items.into_iter().collect();
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    items.join(", ")
}

impl Rollup {
    /// The value columns of a row: [`VALUES`], then [`QUARTERS`] if kept.
    pub(crate) fn values(&self) -> impl Iterator<Item = &'static Value> + '_ {
        let quarters: &'static [Value] = if self.quarters { &QUARTERS } else { &[] };
        VALUES.iter().chain(quarters)
    }

    /// The columns a batch's deltas are sent in, as arrays: key columns, bucket and
    /// values, each with its SQL type (the lane, a scalar, is not among them).
    pub(crate) fn arrays(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.key
            .iter()
            .map(|k| (k.name, k.ty))
            .chain([("bucket", "timestamptz")])
            .chain(self.values().map(|v| (v.name, v.ty)))
    }

    /// The key columns besides bucket and lane.
    pub(crate) fn key_names(&self) -> String {
        list(self.key.iter().map(|k| k.name))
    }

    /// The whole key: key columns, bucket, lane.
    pub(crate) fn primary_key(&self) -> String {
        let lane: &[&str] = if self.lane { &["lane"] } else { &[] };
        list(
            self.key
                .iter()
                .map(|k| k.name)
                .chain(["bucket"])
                .chain(lane.iter().copied()),
        )
    }

    /// Every column, in stored order.
    pub(crate) fn columns(&self) -> String {
        format!(
            "{}, {}",
            self.primary_key(),
            list(self.values().map(|v| v.name))
        )
    }

    /// The `ON CONFLICT` clause that merges a new row into the stored one (`r`).
    pub(crate) fn on_conflict(&self) -> String {
        let set = list(self.values().map(|v| {
            let merged = v
                .merge
                .of(&format!("r.{}", v.name), &format!("excluded.{}", v.name));
            format!("{} = {merged}", v.name)
        }));
        format!("ON CONFLICT ({}) DO UPDATE SET {set}", self.primary_key())
    }

    /// Upserts rows given as arrays, one parameter per column from `$first` on, in
    /// [`Rollup::columns`] order except the lane, which is the scalar parameter after
    /// them (see [`Rollup::parameters`]). Returns the statement and the next free
    /// parameter number.
    pub(crate) fn upsert_arrays(&self, first: usize) -> (String, usize) {
        let unnest = list(
            self.arrays()
                .zip(first..)
                .map(|((_, ty), n)| format!("${n}::{ty}[]")),
        );
        let mut next = first + self.arrays().count();
        let names = list(self.arrays().map(|(name, _)| name));
        let select = if self.lane {
            let lane = next;
            next += 1;
            let keys = list(self.key.iter().map(|k| k.name).chain(["bucket"]));
            format!(
                "SELECT {keys}, ${lane}::int2, {} FROM unnest({unnest}) AS u({names})",
                list(self.values().map(|v| v.name))
            )
        } else {
            format!("SELECT * FROM unnest({unnest})")
        };
        (
            format!(
                "INSERT INTO {} AS r ({})\n    {select}\n    {}",
                self.table,
                self.columns(),
                self.on_conflict()
            ),
            next,
        )
    }

    /// Upserts the rollup of the rows of `source` (`customer_id`, `service`,
    /// `quantity`, `recorded_at`), the lane (if any) parameter `$lane`, grouped by key
    /// and bucket and in key order (the lock order).
    pub(crate) fn upsert_from(&self, source: &str, lane: usize) -> String {
        let keys = self.key_names();
        let lane = if self.lane {
            format!(", ${lane}::int2")
        } else {
            String::new()
        };
        let values = list(self.values().map(|v| v.of_events(&quarter_of_bucket)));
        let groups = list((1..=self.key.len() + 1).map(|n| n.to_string()));
        format!(
            "INSERT INTO {table} AS r ({columns})
    SELECT {keys}, b{lane}, {values}
    FROM (SELECT *, date_bin('{width}', recorded_at, {ORIGIN}) AS b FROM {source}) i
    GROUP BY {groups} ORDER BY {groups}
    {conflict}",
            table = self.table,
            columns = self.columns(),
            width = self.width,
            conflict = self.on_conflict(),
        )
    }

    /// How many parameters [`Rollup::upsert_arrays`] takes.
    pub(crate) fn parameters(&self) -> usize {
        self.arrays().count() + usize::from(self.lane)
    }
}

/// "`recorded_at` is in minutes `[lo, hi)` of bucket `b`'s hour", in SQL.
pub(crate) fn quarter_of_bucket(lo: u32, hi: u32) -> String {
    match (lo, hi) {
        (0, hi) => format!("recorded_at < b + interval '{hi} minutes'"),
        (lo, 60) => format!("recorded_at >= b + interval '{lo} minutes'"),
        (lo, hi) => format!(
            "recorded_at >= b + interval '{lo} minutes' AND recorded_at < b + interval '{hi} minutes'"
        ),
    }
}

/// The value columns of `rollup` as read: [`VALUES`] (then [`QUARTERS`], if asked and
/// kept), for a `SELECT`.
pub(crate) fn value_names(quarters: bool) -> String {
    let q: &[Value] = if quarters { &QUARTERS } else { &[] };
    list(VALUES.iter().chain(q).map(|v| v.name))
}

/// The quarter-detail column holding the sum of an hour's first `q` quarters (1–3).
pub(crate) fn sum_to_quarter(q: u32) -> Option<&'static str> {
    QUARTERS
        .iter()
        .find(|v| v.agg == Agg::Sum && v.minutes == Some((0, 15 * q)))
        .map(|v| v.name)
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

    /// The columns the migrations give `table`: those of its `CREATE TABLE`, then those
    /// later `ALTER TABLE … ADD COLUMN`s add, in order.
    fn migrated_columns(table: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut out = Vec::new();
        for m in MIGRATIONS.iter() {
            let create = format!("CREATE TABLE {table} (");
            if let Some(i) = m.sql.find(&create) {
                let body = &m.sql[i + create.len()..];
                let body = &body[..body.find("\n)").unwrap_or(body.len())];
                for line in body.lines().map(str::trim) {
                    let name = ident(line);
                    let constraint = ["PRIMARY", "CHECK", "CONSTRAINT", "UNIQUE", "FOREIGN"];
                    if !name.is_empty() && !constraint.contains(&name.as_str()) {
                        out.push(name);
                    }
                }
            }
            let alter = format!("ALTER TABLE {table}\n");
            let alter_inline = format!("ALTER TABLE {table} ADD COLUMN");
            for (i, _) in m
                .sql
                .match_indices(&alter)
                .chain(m.sql.match_indices(&alter_inline))
            {
                let stmt = &m.sql[i..];
                let stmt = &stmt[..stmt.find(';').unwrap_or(stmt.len())];
                for part in stmt.split("ADD COLUMN ").skip(1) {
                    out.push(ident(part.trim_start()));
                }
            }
        }
        out
    }

    #[test]
    fn the_description_is_the_schema() {
        for r in ROLLUPS {
            let described: Vec<String> = r.columns().split(", ").map(str::to_owned).collect();
            let mut migrated = migrated_columns(r.table);
            // The migrations add columns in their own order; compare as sets, each once.
            let mut sorted = described.clone();
            sorted.sort();
            migrated.sort();
            assert_eq!(sorted, migrated, "{}", r.table);
        }
    }

    #[test]
    fn the_merge_rule_is_tally_core_s() {
        // Counts and sums add, minimum and maximum widen: Totals::merge and the
        // quarter detail's.
        for v in VALUES.iter().chain(&QUARTERS) {
            let expected = match v.agg {
                Agg::Count | Agg::Sum => Merge::Add,
                Agg::Min => Merge::Least,
                Agg::Max => Merge::Greatest,
            };
            assert_eq!(v.merge, expected, "{}", v.name);
        }
    }

    #[test]
    fn an_upsert_takes_the_parameters_it_says() {
        for r in ROLLUPS {
            let (sql, next) = r.upsert_arrays(5);
            assert_eq!(next, 5 + r.parameters(), "{}", r.table);
            assert!(sql.contains(&format!("${}", next - 1)));
            assert!(!sql.contains(&format!("${next}")));
            assert!(!sql.contains("$4"));
        }
        assert_eq!(sum_to_quarter(2), Some("quantity_by_30"));
        assert_eq!(sum_to_quarter(4), None);
    }
}
