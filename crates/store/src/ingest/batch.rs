//! A batch before it is written, in memory and without I/O: each key once
//! ([`Dedupe`]), the keys found stored ([`KeySet`]), and the rollup deltas in key order
//! ([`BatchDeltas`], the lock order every writer follows).

use std::collections::{HashMap, HashSet, hash_map};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use tally_core::{Quarters, Totals, UsageEvent};
use uuid::Uuid;

use crate::{Error, Result};

/// A rollup row's key as stored: customer (empty for the all-customer rollup),
/// service, bucket.
pub(super) type RowKey<'a> = (&'a str, &'a str, DateTime<Utc>);

/// Rollup deltas in key order (customer, service, bucket: the lock order).
pub(super) type Deltas<'a> = Vec<(RowKey<'a>, Totals)>;
pub(super) type QuarterDeltas<'a> = Vec<(RowKey<'a>, Quarters)>;

/// A rollup key while a batch is aggregated: customer and service numbered per batch
/// ([`Names`]) and the bucket in seconds, so each event's map operations hash three
/// integers. (Profiled: with string keys in a `BTreeMap`, comparing customer ids was a
/// fifth of all CPU time of a load, client and server together.)
type Key = (u32, u32, i64);

/// Hashes the small integer keys this module builds itself ([`Key`], and
/// [`RecentKeys`]' values, which are already random 64-bit hashes) with one multiply
/// per word instead of SipHash, which was 6 % of a load's CPU. Never used for keys a
/// client chooses (those stay on SipHash with a random seed).
#[derive(Default, Clone, Copy)]
pub(super) struct WordHasher(u64);

impl std::hash::Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        // FxHash's step: rotate, mix in, multiply by an odd constant.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

pub(super) type WordMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<WordHasher>>;

/// The distinct strings of a batch, numbered in order of appearance.
#[derive(Default)]
struct Names<'a> {
    ids: HashMap<&'a str, u32>,
    names: Vec<&'a str>,
}

impl<'a> Names<'a> {
    fn id(&mut self, s: &'a str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(s);
        self.ids.insert(s, i);
        i
    }

    fn name(&self, id: u32) -> &'a str {
        self.names.get(id as usize).copied().unwrap_or_default()
    }

    /// Each id's rank in byte order (the order of the "C" collation).
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> =
            (0..u32::try_from(self.names.len()).unwrap_or(u32::MAX)).collect();
        order.sort_unstable_by_key(|&i| self.name(i));
        let mut rank = vec![0; order.len()];
        for (r, i) in order.into_iter().enumerate() {
            if let Some(slot) = rank.get_mut(i as usize) {
                *slot = u32::try_from(r).unwrap_or(u32::MAX);
            }
        }
        rank
    }
}

/// `map` in key order, with names and instants for keys. `customers` is `None` for
/// the all-customer rollup (its key has no customer).
fn in_key_order<'a, V>(
    map: WordMap<Key, V>,
    customers: Option<&Names<'a>>,
    services: &Names<'a>,
) -> Vec<(RowKey<'a>, V)> {
    let (c_rank, s_rank) = (
        customers.map(Names::ranks).unwrap_or_default(),
        services.ranks(),
    );
    let rank = |r: &[u32], i: u32| r.get(i as usize).copied().unwrap_or(u32::MAX);
    let mut rows: Vec<(Key, V)> = map.into_iter().collect();
    rows.sort_unstable_by_key(|((c, s, t), _)| (rank(&c_rank, *c), rank(&s_rank, *s), *t));
    rows.into_iter()
        .filter_map(|((c, s, t), v)| {
            let customer = customers.map_or("", |n| n.name(c));
            Some((
                (customer, services.name(s), DateTime::from_timestamp(t, 0)?),
                v,
            ))
        })
        .collect()
}

/// Adds an event of quantity `q` at `t` (seconds since the epoch) to the quarter-hour
/// detail of its hour.
fn add_quarters(quarters: &mut WordMap<Key, Quarters>, key: Key, t: i64, q: Decimal) -> Result<()> {
    // 0..3600 seconds: the minute is 0..59.
    let minute = u32::try_from(t.rem_euclid(3600) / 60).unwrap_or(59);
    Ok(quarters
        .entry(key)
        .or_default()
        .add(Quarters::of_minute(minute), q)?)
}

/// The rollup deltas of a set of new events (not a rollup table: what a batch adds to
/// each), computed here so that each rollup gets one row per key (the fast, direct and
/// distributed paths send them as arrays).
pub(super) struct BatchDeltas<'a> {
    /// Per customer, service and UTC hour, by quarter hour (the hour's totals are the
    /// quarters merged).
    pub(super) hourly: QuarterDeltas<'a>,
    pub(super) daily: Deltas<'a>,
    /// All customers (empty customer), per service and UTC hour.
    pub(super) totals: QuarterDeltas<'a>,
    pub(super) events: u64,
    pub(super) quantity: Decimal,
}

impl<'a> BatchDeltas<'a> {
    pub(super) fn of(events: impl Iterator<Item = &'a UsageEvent>) -> Result<BatchDeltas<'a>> {
        let (mut customers, mut services) = (Names::default(), Names::default());
        let mut hourly: WordMap<Key, Quarters> = WordMap::default();
        let mut daily: WordMap<Key, Totals> = WordMap::default();
        let mut totals: WordMap<Key, Quarters> = WordMap::default();
        let (mut n, mut quantity) = (0u64, Decimal::ZERO);
        for e in events {
            let q = e.quantity.value();
            let c = customers.id(e.customer.as_str());
            let s = services.id(e.service.as_str());
            let t = e.recorded_at.timestamp();
            let (hour, day) = (t - t.rem_euclid(3600), t - t.rem_euclid(86_400));
            add_quarters(&mut hourly, (c, s, hour), t, q)?;
            match daily.entry((c, s, day)) {
                hash_map::Entry::Occupied(mut d) => d.get_mut().add(q)?,
                hash_map::Entry::Vacant(v) => {
                    v.insert(Totals::of(q));
                }
            }
            // All customers added up: no customer in the key.
            add_quarters(&mut totals, (0, s, hour), t, q)?;
            quantity = tally_core::add_exact(quantity, q, "a batch's total")?;
            n += 1;
        }
        Ok(BatchDeltas {
            hourly: in_key_order(hourly, Some(&customers), &services),
            daily: in_key_order(daily, Some(&customers), &services),
            totals: in_key_order(totals, None, &services),
            events: n,
            quantity,
        })
    }
}

/// Event keys a statement returned as `(event_id, customer_id[, digest])` rows: the
/// replays the fast path dropped, the stored keys the direct path found, the keys
/// Citus let a writer claim; with the payload digest stored for each when the
/// statement returned one (`None`: not known, a key stored before digests were).
#[derive(Default)]
pub(super) struct KeySet(HashMap<Uuid, Vec<(String, Option<i64>)>>);

impl KeySet {
    pub(super) fn of(rows: &[tokio_postgres::Row], context: &'static str) -> Result<KeySet> {
        let mut ids: HashMap<Uuid, Vec<(String, Option<i64>)>> = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: Uuid = r.try_get(0).map_err(Error::db(context))?;
            let digest = match r.len() > 2 {
                true => r.try_get(2).map_err(Error::db(context))?,
                false => None,
            };
            ids.entry(id)
                .or_default()
                .push((r.try_get(1).map_err(Error::db(context))?, digest));
        }
        Ok(KeySet(ids))
    }

    /// Whether `e`'s key is in the set (by id first; no key is built per event).
    pub(super) fn contains(&self, e: &UsageEvent) -> bool {
        self.digest_of(e).is_some()
    }

    /// The digest stored with `e`'s key, if the key is in the set.
    pub(super) fn digest_of(&self, e: &UsageEvent) -> Option<Option<i64>> {
        self.0.get(&e.id.uuid()).and_then(|customers| {
            customers
                .iter()
                .find(|(c, _)| c == e.customer.as_str())
                .map(|(_, d)| *d)
        })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn extend(&mut self, other: KeySet) {
        for (id, keys) in other.0 {
            self.0.entry(id).or_default().extend(keys);
        }
    }
}

/// A batch with each key once: a key repeated inside a batch is the same event (or a
/// conflict, if its payload differs), and its first occurrence is the one written.
pub(crate) struct Dedupe<'e> {
    events: &'e [UsageEvent],
    /// The first event of each key, in order.
    pub(crate) unique: Vec<&'e UsageEvent>,
    /// Where each of `unique` is in the batch.
    pub(crate) index: Vec<usize>,
    /// Whether a key came more than once.
    repeats: bool,
}

impl<'e> Dedupe<'e> {
    pub(crate) fn of(events: &'e [UsageEvent]) -> Dedupe<'e> {
        let mut seen = HashSet::with_capacity(events.len());
        let (mut unique, mut index) = (Vec::with_capacity(events.len()), Vec::new());
        for (i, e) in events.iter().enumerate() {
            if seen.insert((e.id, e.customer.as_str())) {
                unique.push(e);
                index.push(i);
            }
        }
        let repeats = unique.len() < events.len();
        Dedupe {
            events,
            unique,
            index,
            repeats,
        }
    }

    /// The events (indexes into the batch) that conflict: their key is stored with
    /// another payload digest (`stored`, what the write found), or came earlier in the
    /// batch with another payload. A key stored without a digest (before digests
    /// were kept) conflicts with nothing. Digests are computed only for the events
    /// whose key was found stored or repeated.
    /// The events that repeat an earlier key of the batch with another payload.
    pub(crate) fn repeat_conflicts(&self) -> Vec<usize> {
        self.conflicts(&KeySet::default())
    }

    pub(super) fn conflicts(&self, stored: &KeySet) -> Vec<usize> {
        if stored.is_empty() && !self.repeats {
            return Vec::new();
        }
        let mut first: HashMap<(tally_core::EventId, &str), i64> = HashMap::new();
        let mut out = Vec::new();
        let mut next_unique = self.index.iter().peekable();
        for (i, e) in self.events.iter().enumerate() {
            let is_first = next_unique.next_if(|&&j| j == i).is_some();
            match stored.digest_of(e) {
                Some(Some(d)) if d != e.digest() => out.push(i),
                Some(_) => {}
                None if self.repeats => {
                    let d = e.digest();
                    let key = (e.id, e.customer.as_str());
                    if is_first {
                        first.insert(key, d);
                    } else if first.get(&key).is_some_and(|f| *f != d) {
                        out.push(i);
                    }
                }
                None => {}
            }
        }
        out
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An event for the write path's unit tests.
    pub(in crate::ingest) fn event(customer: &str, service: &str, at: &str, q: i64) -> UsageEvent {
        UsageEvent::new(
            customer.parse().unwrap(),
            service.parse().unwrap(),
            tally_core::Quantity::new(Decimal::from(q)).unwrap(),
        )
        .at(DateTime::parse_from_rfc3339(at)
            .unwrap()
            .with_timezone(&Utc))
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn deltas_are_one_row_per_key_in_byte_order() {
        // Arrival order is not key order; "B" sorts before "a" in the "C" collation.
        let events = [
            event("a", "storage", "2026-01-01T10:50:00Z", 3),
            event("a", "api", "2026-01-01T10:20:00Z", 2),
            event("B", "api", "2026-01-01T11:05:00Z", 7),
            event("a", "api", "2026-01-01T10:05:00Z", 5),
            event("a", "api", "2026-01-02T00:00:00Z", 1),
        ];
        let d = BatchDeltas::of(events.iter()).unwrap();
        assert_eq!((d.events, d.quantity), (5, Decimal::from(18)));
        assert_eq!(
            d.hourly.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [
                ("B", "api", t("2026-01-01T11:00:00Z")),
                ("a", "api", t("2026-01-01T10:00:00Z")),
                ("a", "api", t("2026-01-02T00:00:00Z")),
                ("a", "storage", t("2026-01-01T10:00:00Z")),
            ]
        );
        // a/api 10:00: 5 at :05 and 2 at :20 — quarters 0 and 1.
        let (_, q) = &d.hourly[1];
        let hour = q.part(0, 4).unwrap().unwrap();
        assert_eq!(
            (hour.events, hour.quantity, hour.min, hour.max),
            (2, Decimal::from(7), Decimal::from(2), Decimal::from(5))
        );
        assert_eq!(q.part(0, 1).unwrap().unwrap().quantity, Decimal::from(5));
        assert_eq!(q.part(1, 2).unwrap().unwrap().quantity, Decimal::from(2));
        assert_eq!(q.part(2, 4).unwrap(), None);
        assert_eq!(
            d.daily.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            [
                ("B", "api", t("2026-01-01T00:00:00Z")),
                ("a", "api", t("2026-01-01T00:00:00Z")),
                ("a", "api", t("2026-01-02T00:00:00Z")),
                ("a", "storage", t("2026-01-01T00:00:00Z")),
            ]
        );
        // All customers: no customer in the key, the customers' rows added up.
        let totals: Vec<(RowKey<'_>, Decimal)> = d
            .totals
            .iter()
            .map(|(k, q)| (*k, q.part(0, 4).unwrap().unwrap().quantity))
            .collect();
        assert_eq!(
            totals,
            [
                (("", "api", t("2026-01-01T10:00:00Z")), Decimal::from(7)),
                (("", "api", t("2026-01-01T11:00:00Z")), Decimal::from(7)),
                (("", "api", t("2026-01-02T00:00:00Z")), Decimal::from(1)),
                (("", "storage", t("2026-01-01T10:00:00Z")), Decimal::from(3)),
            ]
        );
    }

    #[test]
    fn the_lock_order_is_customer_service_bucket_by_bytes() {
        let (mut customers, mut services) = (Names::default(), Names::default());
        let mut map: WordMap<Key, u8> = WordMap::default();
        for (i, (c, s, t)) in [
            ("é", "x", 7200),
            ("z", "x", 0),
            ("z", "a", 3600),
            ("z", "a", 0),
        ]
        .into_iter()
        .enumerate()
        {
            map.insert((customers.id(c), services.id(s), t), i as u8);
        }
        let rows = in_key_order(map, Some(&customers), &services);
        let order: Vec<u8> = rows.iter().map(|(_, v)| *v).collect();
        // "z" (0x7a) before "é" (0xc3 0xa9); then service, then bucket.
        assert_eq!(order, [3, 2, 1, 0]);
    }

    #[test]
    fn a_key_repeated_in_a_batch_is_written_once_and_a_changed_payload_conflicts() {
        let a = event("a", "api", "2026-01-01T10:00:00Z", 1);
        let same = a.clone();
        let mut changed = a.clone();
        changed.quantity = tally_core::Quantity::new(Decimal::from(2)).unwrap();
        let other = event("a", "api", "2026-01-01T10:00:00Z", 1);
        let batch = [a, same, other, changed];
        let d = Dedupe::of(&batch);
        assert_eq!(d.index, [0, 2]);
        assert_eq!(d.repeat_conflicts(), [3]);
    }
}
