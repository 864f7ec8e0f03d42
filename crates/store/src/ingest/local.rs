//! What this process is writing that the database may not show yet, and who wants to
//! hear when a batch commits. Quota checks add the first to what they read; the alerts
//! layer listens to the second. Neither touches the database.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock},
};

use rust_decimal::Decimal;
use tally_core::{CustomerId, Service, UsageEvent};

/// Called with the distinct customer and service pairs of every committed batch.
pub type CommitHook = Arc<dyn Fn(&[(CustomerId, Service)]) + Send + Sync>;

// Entries whose events are all settled are dropped past this many keys.
const PRUNE_ABOVE: usize = 100_000;

#[derive(Default)]
struct Entry {
    // Cumulative quantities: everything handed to the write path, and the part of it
    // committed or dead-lettered since.
    recorded: Decimal,
    settled: Decimal,
}

#[derive(Default)]
struct Ledger {
    // Bumped whenever settled entries are dropped: marks taken before are void.
    epoch: u64,
    entries: HashMap<String, HashMap<Service, Entry>>,
}

/// A point in this process's record of one customer and service, taken just before
/// reading its usage from the database (see [`crate::Store::local_mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMark {
    epoch: u64,
    settled: Decimal,
}

#[derive(Default)]
pub(crate) struct Local {
    ledger: Mutex<Ledger>,
    hooks: RwLock<Vec<CommitHook>>,
}

/// Sums `events`' quantities per customer and service.
fn per_key(events: &[UsageEvent]) -> HashMap<(&str, &Service), Decimal> {
    let mut out: HashMap<(&str, &Service), Decimal> = HashMap::new();
    for e in events {
        let q = out.entry((e.customer.as_str(), &e.service)).or_default();
        // Saturating: an over-count only makes a check stricter, never laxer.
        *q = q.checked_add(e.quantity.value()).unwrap_or(Decimal::MAX);
    }
    out
}

impl Local {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `events` entered the write path.
    pub(super) fn recorded(&self, events: &[UsageEvent]) {
        let sums = per_key(events);
        let mut l = self.ledger();
        if l.entries.len() > PRUNE_ABOVE {
            l.entries.retain(|_, services| {
                services.retain(|_, e| e.recorded != e.settled);
                !services.is_empty()
            });
            l.epoch += 1;
        }
        for ((customer, service), q) in sums {
            let services = match l.entries.get_mut(customer) {
                Some(s) => s,
                None => l.entries.entry(customer.to_owned()).or_default(),
            };
            let e = services.entry(service.clone()).or_default();
            e.recorded = e.recorded.checked_add(q).unwrap_or(Decimal::MAX);
        }
    }

    /// `events` left the write path: committed, dead-lettered or given back.
    pub(super) fn settled(&self, events: &[UsageEvent]) {
        self.settle(&per_key(events));
    }

    fn settle(&self, sums: &HashMap<(&str, &Service), Decimal>) {
        let mut l = self.ledger();
        for ((customer, service), q) in sums {
            if let Some(e) = l
                .entries
                .get_mut(*customer)
                .and_then(|s| s.get_mut(*service))
            {
                e.settled = e.settled.checked_add(*q).unwrap_or(Decimal::MAX);
            }
        }
    }

    /// `events` committed: settles them, then tells the hooks which keys they touched
    /// (one pass over the events for both).
    pub(super) fn committed(&self, events: &[UsageEvent]) {
        let sums = per_key(events);
        self.settle(&sums);
        if self
            .hooks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
        {
            return;
        }
        let mut keys: Vec<(CustomerId, Service)> = sums
            .into_keys()
            .filter_map(|(c, s)| Some((CustomerId::new(c).ok()?, s.clone())))
            .collect();
        keys.sort();
        self.notify(&keys);
    }

    /// Tells the hooks a commit touched `keys`.
    pub(crate) fn notify(&self, keys: &[(CustomerId, Service)]) {
        for hook in self
            .hooks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            hook(keys);
        }
    }

    pub(crate) fn on_commit(&self, hook: CommitHook) {
        self.hooks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    pub(crate) fn mark(&self, customer: &CustomerId, service: &Service) -> LocalMark {
        let l = self.ledger();
        let settled = l
            .entries
            .get(customer.as_str())
            .and_then(|s| s.get(service))
            .map_or(Decimal::ZERO, |e| e.settled);
        LocalMark {
            epoch: l.epoch,
            settled,
        }
    }

    pub(crate) fn since(
        &self,
        customer: &CustomerId,
        service: &Service,
        mark: LocalMark,
    ) -> Option<Decimal> {
        let l = self.ledger();
        if l.epoch != mark.epoch {
            return None;
        }
        let recorded = l
            .entries
            .get(customer.as_str())
            .and_then(|s| s.get(service))
            .map_or(Decimal::ZERO, |e| e.recorded);
        Some(
            recorded
                .checked_sub(mark.settled)
                .unwrap_or(Decimal::ZERO)
                .max(Decimal::ZERO),
        )
    }
}
