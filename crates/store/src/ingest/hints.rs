//! The direct path's hints: keys this process wrote recently ([`RecentKeys`]) and the
//! newest hourly rollup row per customer and service ([`NewestHours`]). A hint never
//! decides alone: the unique keys do.

use std::collections::HashSet;

use tally_core::UsageEvent;

use super::batch::{QuarterDeltas, WordHasher};

/// Keys this process wrote recently, as 64-bit hashes, the oldest forgotten first:
/// what lets the direct path skip the stage. A retry usually follows its original
/// within seconds and reaches the same process; its key is found here and checked
/// against the database, while a batch of keys not found here goes straight in by
/// COPY. It never decides alone: a hash collision only sends an event to that check,
/// and a key this process did not see (another process wrote it, or it was forgotten)
/// makes the COPY fail on the unique key, and the batch takes the staged path.
pub(crate) struct RecentKeys {
    pub(super) set: HashSet<u64, std::hash::BuildHasherDefault<WordHasher>>,
    order: std::collections::VecDeque<u64>,
    hasher: std::hash::RandomState,
}

/// An event with the hash of its key ([`RecentKeys::hash`]).
pub(super) type Hashed<'e> = (&'e UsageEvent, u64);

/// How many keys [`RecentKeys`] holds: ~6 MB, several minutes of a busy writer.
const RECENT_KEYS: usize = 1 << 18;

impl Default for RecentKeys {
    fn default() -> RecentKeys {
        RecentKeys {
            set: HashSet::with_capacity_and_hasher(RECENT_KEYS, Default::default()),
            order: std::collections::VecDeque::with_capacity(RECENT_KEYS),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl RecentKeys {
    pub(super) fn hash(&self, key: impl std::hash::Hash) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }

    pub(super) fn remember(&mut self, hashes: impl Iterator<Item = u64>) {
        for h in hashes {
            if self.set.insert(h) {
                self.order.push_back(h);
                if self.order.len() > RECENT_KEYS
                    && let Some(old) = self.order.pop_front()
                {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Per customer and service, the newest hour whose hourly rollup row this process
/// wrote: a batch's row for a later hour is new unless another process wrote it,
/// which is what lets the direct path `COPY` new rows (a backfill's are nearly all
/// new; a live process makes one per customer and service each hour). A hint only:
/// wrong in one direction it sends a new row to the merge (correct, slower), in the
/// other the `COPY` fails on the unique key and the rows are merged
/// ([`super::tx`]'s `copy_new_hourly`). Bounded: one slot per hash, a pair evicting another that
/// shares its slot (the evicted pair's rows are merged until written again).
pub(crate) struct NewestHours {
    // (hash of customer and service, newest hour in seconds); hash 0 = empty.
    slots: Vec<(u64, i64)>,
    hasher: std::hash::RandomState,
}

/// Slots of [`NewestHours`]: 1 MB.
const NEWEST_SLOTS: usize = 1 << 16;

impl Default for NewestHours {
    fn default() -> NewestHours {
        NewestHours {
            slots: vec![(0, 0); NEWEST_SLOTS],
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl NewestHours {
    fn slot(&self, customer: &str, service: &str) -> (usize, u64) {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one((customer, service)).max(1);
        ((h % NEWEST_SLOTS as u64) as usize, h)
    }

    /// Which of `rows` (in key order) are new by the hint, and the newest hour of each
    /// customer and service among them, to [`NewestHours::remember`] once written.
    pub(super) fn split(&self, rows: &QuarterDeltas<'_>) -> (Vec<bool>, Vec<(usize, u64, i64)>) {
        let mut fresh = Vec::with_capacity(rows.len());
        let mut newest: Vec<(usize, u64, i64)> = Vec::new();
        let mut pair: Option<(&str, &str)> = None;
        let mut seen: Option<i64> = None;
        for ((customer, service, bucket), _) in rows {
            let hour = bucket.timestamp();
            if pair != Some((customer, service)) {
                pair = Some((customer, service));
                let (i, h) = self.slot(customer, service);
                seen = self
                    .slots
                    .get(i)
                    .and_then(|&(tag, newest)| (tag == h).then_some(newest));
                newest.push((i, h, hour));
            } else if let Some(last) = newest.last_mut() {
                last.2 = hour; // key order: the pair's later hours come later
            }
            fresh.push(seen.is_some_and(|s| hour > s));
        }
        (fresh, newest)
    }

    pub(super) fn remember(&mut self, newest: Vec<(usize, u64, i64)>) {
        for (i, h, hour) in newest {
            if let Some(slot) = self.slots.get_mut(i) {
                *slot = if slot.0 == h {
                    (h, slot.1.max(hour))
                } else {
                    (h, hour)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use tally_core::Quarters;

    use super::*;

    fn rows<'a>(keys: &[(&'a str, &'a str, i64)]) -> QuarterDeltas<'a> {
        keys.iter()
            .map(|&(c, s, hour)| {
                let t = DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default();
                ((c, s, t), Quarters::default())
            })
            .collect()
    }

    #[test]
    fn only_hours_after_the_newest_written_are_new() {
        let mut hint = NewestHours::default();
        // A pair never written: nothing is new (its rows may be stored).
        let batch = rows(&[("a", "api", 10), ("a", "api", 11), ("b", "api", 10)]);
        let (fresh, newest) = hint.split(&batch);
        assert_eq!(fresh, [false, false, false]);
        hint.remember(newest);
        // After: later hours are new, the newest and earlier ones (late events) are not.
        let batch = rows(&[
            ("a", "api", 9),
            ("a", "api", 11),
            ("a", "api", 12),
            ("a", "storage", 12),
            ("b", "api", 11),
        ]);
        let (fresh, newest) = hint.split(&batch);
        assert_eq!(fresh, [false, false, true, false, true]);
        hint.remember(newest);
        let (fresh, _) = hint.split(&rows(&[
            ("a", "api", 12),
            ("a", "api", 13),
            ("b", "api", 11),
        ]));
        assert_eq!(fresh, [false, true, false]);
    }

    #[test]
    fn a_pair_evicted_from_its_slot_is_not_new_again() {
        let mut hint = NewestHours::default();
        let (_, newest) = hint.split(&rows(&[("a", "api", 10)]));
        hint.remember(newest);
        // Another pair takes a's slot.
        let (i, _) = hint.slot("a", "api");
        let other = (0..)
            .map(|n| format!("c{n}"))
            .find(|c| hint.slot(c, "api").0 == i)
            .unwrap_or_default();
        let (_, newest) = hint.split(&rows(&[(other.as_str(), "api", 10)]));
        hint.remember(newest);
        let (fresh, _) = hint.split(&rows(&[("a", "api", 11), (other.as_str(), "api", 11)]));
        assert_eq!(fresh, [false, true]);
    }
}
