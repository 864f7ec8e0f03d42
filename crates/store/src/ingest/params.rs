//! A batch's rollup deltas as statement parameters: one array per rollup column, in
//! key order, put in the order the generated upserts (`crate::rollup`) take them.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{Quarters, Totals};
use tokio_postgres::types::ToSql;

use super::batch::{BatchDeltas, Deltas, QuarterDeltas};
use crate::{
    Error, Result,
    rollup::{QUARTERS, ROLLUPS, Rollup},
};

type Param<'p> = &'p (dyn ToSql + Sync);

/// One rollup's deltas as one array per column, in key order.
pub(super) struct Arrays<'a> {
    customer: Vec<&'a str>,
    service: Vec<&'a str>,
    bucket: Vec<DateTime<Utc>>,
    events: Vec<i64>,
    quantity: Vec<Decimal>,
    min: Vec<Decimal>,
    max: Vec<Decimal>,
    quantity_by: [Vec<Decimal>; 3],
    events_by: [Vec<i64>; 3],
    min_of: [Vec<Option<Decimal>>; 4],
    max_of: [Vec<Option<Decimal>>; 4],
}

impl<'a> Arrays<'a> {
    fn with_capacity(n: usize) -> Arrays<'a> {
        Arrays {
            customer: Vec::with_capacity(n),
            service: Vec::with_capacity(n),
            bucket: Vec::with_capacity(n),
            events: Vec::with_capacity(n),
            quantity: Vec::with_capacity(n),
            min: Vec::with_capacity(n),
            max: Vec::with_capacity(n),
            quantity_by: Default::default(),
            events_by: Default::default(),
            min_of: Default::default(),
            max_of: Default::default(),
        }
    }

    fn push(&mut self, (customer, service, bucket): (&'a str, &'a str, DateTime<Utc>), t: &Totals) {
        self.customer.push(customer);
        self.service.push(service);
        self.bucket.push(bucket);
        self.events.push(t.events);
        self.quantity.push(t.quantity);
        self.min.push(t.min);
        self.max.push(t.max);
    }

    /// Deltas without quarter-hour detail (the daily rollup).
    pub(super) fn of_totals(deltas: &Deltas<'a>) -> Arrays<'a> {
        let mut a = Arrays::with_capacity(deltas.len());
        for (k, t) in deltas {
            a.push(*k, t);
        }
        a
    }

    /// Hourly deltas: their totals (the quarters merged) and their quarter detail.
    pub(super) fn of_quarters(deltas: &QuarterDeltas<'a>) -> Result<Arrays<'a>> {
        let mut a = Arrays::with_capacity(deltas.len());
        for (k, q) in deltas {
            a.push(*k, &hour_totals(q)?);
            let c = q.columns()?;
            for (v, x) in a.quantity_by.iter_mut().zip(c.quantity_by) {
                v.push(x);
            }
            for (v, x) in a.events_by.iter_mut().zip(c.events_by) {
                v.push(x);
            }
            for (v, x) in a.min_of.iter_mut().zip(c.min) {
                v.push(x);
            }
            for (v, x) in a.max_of.iter_mut().zip(c.max) {
                v.push(x);
            }
        }
        Ok(a)
    }

    /// The array of column `name` (a column of the rollup description).
    fn column(&self, name: &str) -> Option<Param<'_>> {
        let p: Param<'_> = match name {
            "customer_id" => &self.customer,
            "service" => &self.service,
            "bucket" => &self.bucket,
            "events" => &self.events,
            "quantity" => &self.quantity,
            "min_quantity" => &self.min,
            "max_quantity" => &self.max,
            // The quarter detail in `QUARTERS` order: sums, counts, minima, maxima.
            q => {
                let i = QUARTERS.iter().position(|v| v.name == q)?;
                match i {
                    0..=2 => self.quantity_by.get(i)?,
                    3..=5 => self.events_by.get(i - 3)?,
                    6..=9 => self.min_of.get(i - 6)?,
                    _ => self.max_of.get(i - 10)?,
                }
            }
        };
        Some(p)
    }

    /// The parameters of `rollup.upsert_arrays`: each of `rollup.arrays()` in order,
    /// then the lane if the rollup has one.
    pub(super) fn params<'p>(
        &'p self,
        rollup: &Rollup,
        lane: &'p i16,
        out: &mut Vec<Param<'p>>,
    ) -> Result<()> {
        for (name, _) in rollup.arrays() {
            let p = self.column(name).ok_or_else(|| {
                Error::internal(
                    "building a batch's parameters",
                    format!("rollup column {name} is not known to the write path"),
                )
            })?;
            out.push(p);
        }
        if rollup.lane {
            out.push(lane);
        }
        Ok(())
    }
}

/// An hour's totals from its quarter detail.
pub(super) fn hour_totals(q: &Quarters) -> Result<Totals> {
    Ok(q.part(0, 4)?.unwrap_or(Totals::of(Decimal::ZERO)))
}

/// A batch's rollup deltas as the parameters of the delta upserts, one [`Arrays`] per
/// rollup in `ROLLUPS` order.
pub(super) struct BatchParams<'a> {
    rollups: [Arrays<'a>; 3],
    lane: i16,
}

impl<'a> BatchParams<'a> {
    pub(super) fn of(d: &BatchDeltas<'a>, lane: i16) -> Result<BatchParams<'a>> {
        Ok(BatchParams {
            rollups: [
                Arrays::of_quarters(&d.hourly)?,
                Arrays::of_totals(&d.daily),
                Arrays::of_quarters(&d.totals)?,
            ],
            lane,
        })
    }

    /// Every rollup's parameters, in order.
    pub(super) fn params(&self) -> Result<Vec<Param<'_>>> {
        let mut p = Vec::with_capacity(super::sql::delta_parameters());
        for (a, r) in self.rollups.iter().zip(ROLLUPS) {
            a.params(r, &self.lane, &mut p)?;
        }
        Ok(p)
    }

    /// One rollup's parameters (`i` in `ROLLUPS` order: Citus runs each alone).
    pub(super) fn params_of(&self, i: usize) -> Result<Vec<Param<'_>>> {
        let mut p = Vec::new();
        if let (Some(a), Some(r)) = (self.rollups.get(i), ROLLUPS.get(i)) {
            a.params(r, &self.lane, &mut p)?;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_postgres::types::Type;

    use super::*;
    use crate::ingest::{batch::tests::event, sql};

    /// Each `$n::type` of `sql` with `n` and the type.
    fn placeholders(sql: &str) -> Vec<(usize, Type)> {
        let mut out = Vec::new();
        for part in sql.split('$').skip(1) {
            let n: String = part.chars().take_while(char::is_ascii_digit).collect();
            let Some(ty) = part[n.len()..].strip_prefix("::") else {
                continue;
            };
            let ty: String = ty
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '[' || *c == ']')
                .collect();
            let ty = match ty.as_str() {
                "text[]" => Type::TEXT_ARRAY,
                "timestamptz[]" => Type::TIMESTAMPTZ_ARRAY,
                "int8[]" => Type::INT8_ARRAY,
                "numeric[]" => Type::NUMERIC_ARRAY,
                "int2" => Type::INT2,
                other => panic!("a placeholder of type {other}"),
            };
            out.push((n.parse().unwrap(), ty));
        }
        out
    }

    #[test]
    fn every_parameter_is_where_the_statement_expects_it_and_of_its_type() {
        let events = [
            event("b", "api", "2026-01-01T10:20:00Z", 2),
            event("a", "api", "2026-01-01T10:50:00Z", 3),
        ];
        let d = BatchDeltas::of(events.iter()).unwrap();
        let params = BatchParams::of(&d, 5).unwrap();
        let p = params.params().unwrap();
        for statement in [
            sql::INSERT_NEW_SQL.as_str(),
            sql::DIRECT_ROLLUPS_SQL.as_str(),
        ] {
            let used = placeholders(statement);
            assert_eq!(used.iter().map(|(n, _)| *n).max(), Some(p.len()));
            assert_eq!(p.len(), 49);
            for (n, ty) in used {
                p[n - 1]
                    .to_sql_checked(&ty, &mut BytesMut::new())
                    .unwrap_or_else(|e| panic!("${n} is not a {ty}: {e}"));
            }
        }
        for (i, statement) in sql::DISTRIBUTED_UPSERTS.iter().enumerate() {
            let p = params.params_of(i).unwrap();
            for (n, ty) in placeholders(statement) {
                p[n - 1].to_sql_checked(&ty, &mut BytesMut::new()).unwrap();
            }
        }
    }
}
