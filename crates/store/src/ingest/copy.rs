//! Binary COPY encoders: events, staged events, keys, and new hourly rollup rows.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use tally_core::{Quarters, UsageEvent};
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    types::{IsNull, ToSql, Type, WrongType},
};

use super::{batch::RowKey, params::hour_totals};
use crate::{Error, Result};

const EVENT_TYPES: [Type; 6] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
    Type::JSONB,
];

const STAGE_TYPES: [Type; 8] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::NUMERIC,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::INT8,
    Type::INT8,
];

/// Copies `events` into the events table by binary COPY.
pub(super) async fn copy_events(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
) -> Result<()> {
    let mut writer = copy_writer(
        client,
        "COPY usage_events (event_id, customer_id, service, quantity, recorded_at, metadata) FROM STDIN BINARY",
        &EVENT_TYPES,
    )
    .await?;
    for e in events {
        let (id, quantity) = (e.id.uuid(), e.quantity.value());
        writer
            .as_mut()
            .write(&[
                &id,
                &e.customer.as_str(),
                &e.service.as_str(),
                &quantity,
                &e.recorded_at,
                &Jsonb(e.metadata.as_str()),
            ])
            .await
            .map_err(Error::db("copying events"))?;
    }
    copy_finish(writer).await
}

/// Copies `events` into the stage by binary COPY, with their digests and their places
/// from `first` on.
pub(super) async fn copy_stage(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
    first: u64,
) -> Result<()> {
    let mut writer = copy_writer(
        client,
        "COPY tally_stage (event_id, customer_id, service, quantity, recorded_at, metadata, digest, ord) FROM STDIN BINARY",
        &STAGE_TYPES,
    )
    .await?;
    for (e, ord) in events.iter().zip(first..) {
        let (id, quantity) = (e.id.uuid(), e.quantity.value());
        let ord = i64::try_from(ord).unwrap_or(i64::MAX);
        writer
            .as_mut()
            .write(&[
                &id,
                &e.customer.as_str(),
                &e.service.as_str(),
                &quantity,
                &e.recorded_at,
                &Jsonb(e.metadata.as_str()),
                &e.digest(),
                &ord,
            ])
            .await
            .map_err(Error::db("staging events"))?;
    }
    copy_finish(writer).await
}

/// Copies the keys of `events` (sorted by key: the lock order), with their payload
/// digests, into the key table by binary COPY. A key stored already fails it with a
/// unique violation.
pub(super) async fn copy_keys(
    client: &deadpool_postgres::Client,
    events: &[&UsageEvent],
) -> Result<()> {
    let mut writer = copy_writer(
        client,
        "COPY usage_event_keys (event_id, customer_id, digest) FROM STDIN BINARY",
        &[Type::UUID, Type::TEXT, Type::INT8],
    )
    .await?;
    for e in events {
        writer
            .as_mut()
            .write(&[&e.id.uuid(), &e.customer.as_str(), &e.digest()])
            .await
            .map_err(Error::db("copying event keys"))?;
    }
    copy_finish(writer).await
}

type CopyWriter = std::pin::Pin<Box<BinaryCopyInWriter>>;

/// Starts the binary `COPY … FROM STDIN BINARY` of `sql`, columns of `types`.
async fn copy_writer(
    client: &deadpool_postgres::Client,
    sql: &str,
    types: &[Type],
) -> Result<CopyWriter> {
    let sink = client
        .copy_in(sql)
        .await
        .map_err(Error::db("starting COPY"))?;
    Ok(Box::pin(BinaryCopyInWriter::new(sink, types)))
}

async fn copy_finish(mut writer: CopyWriter) -> Result<()> {
    writer
        .as_mut()
        .finish()
        .await
        .map_err(Error::db("finishing COPY"))?;
    Ok(())
}

// The columns of `copy_hourly`: the hourly rollup's (`HOURLY_ORDER`).
const HOURLY_TYPES: [Type; 21] = {
    const N: Type = Type::NUMERIC;
    const I: Type = Type::INT8;
    #[rustfmt::skip]
    let types = [
        Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, I, N, N, N,
        N, N, N, I, I, I,
        N, N, N, N, N, N, N, N,
    ];
    types
};

/// Copies hourly rollup rows into `usage_hourly` by binary COPY, in key order; a row
/// stored already fails it with a unique violation.
pub(super) async fn copy_hourly(
    client: &deadpool_postgres::Client,
    rows: &[&(RowKey<'_>, Quarters)],
) -> Result<()> {
    let mut writer = copy_writer(client, &super::sql::COPY_HOURLY_SQL, &HOURLY_TYPES).await?;
    for ((customer, service, bucket), q) in rows.iter().copied() {
        let t = hour_totals(q)?;
        let c = q.columns()?;
        let [q15, q30, q45] = &c.quantity_by;
        let [e15, e30, e45] = &c.events_by;
        let [n0, n1, n2, n3] = &c.min;
        let [x0, x1, x2, x3] = &c.max;
        writer
            .as_mut()
            .write(&[
                customer,
                service,
                bucket,
                &t.events,
                &t.quantity,
                &t.min,
                &t.max,
                q15,
                q30,
                q45,
                e15,
                e30,
                e45,
                n0,
                n1,
                n2,
                n3,
                x0,
                x1,
                x2,
                x3,
            ])
            .await
            .map_err(Error::db("copying rollup rows"))?;
    }
    copy_finish(writer).await
}

/// Metadata text sent as `jsonb` without parsing it again (binary jsonb is a version
/// byte followed by the text).
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if !Self::accepts(ty) {
            return Err(Box::new(WrongType::new::<Self>(ty.clone())));
        }
        self.to_sql(ty, out)
    }
}

/// The order `copy_hourly` writes a row's values in: the hourly rollup's columns.
#[cfg(test)]
const HOURLY_ORDER: &str = "customer_id, service, bucket, events, quantity, min_quantity, max_quantity, \
    quantity_by_15, quantity_by_30, quantity_by_45, events_by_15, events_by_30, events_by_45, \
    min_00, min_15, min_30, min_45, max_00, max_15, max_30, max_45";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::HOURLY;

    #[test]
    fn new_hourly_rows_are_written_in_the_rollup_s_column_order() {
        assert_eq!(HOURLY.columns(), HOURLY_ORDER.replace("\n", ""));
        let ty = |t: &str| match t {
            "text" => Type::TEXT,
            "timestamptz" => Type::TIMESTAMPTZ,
            "int8" => Type::INT8,
            _ => Type::NUMERIC,
        };
        let described: Vec<Type> = HOURLY.arrays().map(|(_, t)| ty(t)).collect();
        assert_eq!(described, HOURLY_TYPES);
    }
}
