use std::{collections::BTreeMap, fmt, str::FromStr, sync::Arc};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One of the six services every Tally installation knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum BuiltIn {
    /// API requests.
    Api,
    /// Storage held over time, in GiB-hours.
    Storage,
    /// Bytes transferred, in GiB.
    Bandwidth,
    /// CPU time, in CPU-hours.
    Compute,
    /// Database queries.
    Database,
    /// Function invocations.
    Functions,
}

impl BuiltIn {
    /// All six, in the order reports list them.
    pub const ALL: [BuiltIn; 6] = [
        BuiltIn::Api,
        BuiltIn::Storage,
        BuiltIn::Bandwidth,
        BuiltIn::Compute,
        BuiltIn::Database,
        BuiltIn::Functions,
    ];

    /// The service name as stored and typed.
    pub const fn name(self) -> &'static str {
        match self {
            BuiltIn::Api => "api",
            BuiltIn::Storage => "storage",
            BuiltIn::Bandwidth => "bandwidth",
            BuiltIn::Compute => "compute",
            BuiltIn::Database => "database",
            BuiltIn::Functions => "functions",
        }
    }

    /// The unit quantities of this service are counted in. Sizes are binary: `GiB`
    /// (2^30 bytes), as the `track` helpers convert them, never decimal GB.
    pub const fn unit(self) -> &'static str {
        match self {
            BuiltIn::Api => "requests",
            BuiltIn::Storage => "GiB-hours",
            BuiltIn::Bandwidth => "GiB",
            BuiltIn::Compute => "CPU-hours",
            BuiltIn::Database => "queries",
            BuiltIn::Functions => "invocations",
        }
    }

    /// The seed's default price per unit (SPEC §2).
    pub fn default_unit_price(self) -> Decimal {
        match self {
            BuiltIn::Api => Decimal::new(1, 4),
            BuiltIn::Storage => Decimal::new(1, 3),
            BuiltIn::Bandwidth => Decimal::new(1, 2),
            BuiltIn::Compute => Decimal::new(5, 2),
            BuiltIn::Database => Decimal::new(1, 5),
            BuiltIn::Functions => Decimal::new(2, 4),
        }
    }

    fn from_name(name: &str) -> Option<BuiltIn> {
        BuiltIn::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// A metered service: a built-in or a user-defined meter's name.
///
/// Parsing text (`"api".parse()`) accepts only the built-ins, so a typo such as
/// `"apis"` is an error; user-defined meters are accepted through a [`Catalog`] that
/// knows them.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Service(Repr);

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Repr {
    BuiltIn(BuiltIn),
    // Arc: events carry their service, and cloning one must not allocate.
    Custom(Arc<str>),
}

impl Service {
    /// API requests.
    pub const API: Service = Service(Repr::BuiltIn(BuiltIn::Api));
    /// Storage (GiB-hours).
    pub const STORAGE: Service = Service(Repr::BuiltIn(BuiltIn::Storage));
    /// Bandwidth (GiB).
    pub const BANDWIDTH: Service = Service(Repr::BuiltIn(BuiltIn::Bandwidth));
    /// Compute (CPU-hours).
    pub const COMPUTE: Service = Service(Repr::BuiltIn(BuiltIn::Compute));
    /// Database queries.
    pub const DATABASE: Service = Service(Repr::BuiltIn(BuiltIn::Database));
    /// Function invocations.
    pub const FUNCTIONS: Service = Service(Repr::BuiltIn(BuiltIn::Functions));

    /// The longest meter name accepted.
    pub const MAX_LEN: usize = 63;

    /// A user-defined meter's name: 1–63 characters of `[a-z0-9_]`, starting with a
    /// letter, and not a built-in's name.
    pub fn custom(name: &str) -> Result<Service> {
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        let starts = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
        if name.is_empty() || name.len() > Self::MAX_LEN || !ok_chars || !starts {
            return Err(Error::invalid(
                "service",
                name,
                "a meter name is 1-63 characters of a-z, 0-9 and _, starting with a letter",
            ));
        }
        if BuiltIn::from_name(name).is_some() {
            return Err(Error::invalid(
                "service",
                name,
                "is a built-in service, not a custom meter",
            ));
        }
        Ok(Service(Repr::Custom(Arc::from(name))))
    }

    /// The service an event of type `name` is stored as (a built-in for a built-in's
    /// name). `name` is an event type validated by [`crate::EventType`], whose rule is
    /// looser than a custom meter's name (`.`, `-`, `:` and `/` are allowed).
    pub(crate) fn of_event_type(name: &str) -> Service {
        match BuiltIn::from_name(name) {
            Some(b) => b.into(),
            None => Service(Repr::Custom(Arc::from(name))),
        }
    }

    /// The service's name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::BuiltIn(b) => b.name(),
            Repr::Custom(s) => s,
        }
    }

    /// The built-in this is, if it is one.
    pub fn built_in(&self) -> Option<BuiltIn> {
        match self.0 {
            Repr::BuiltIn(b) => Some(b),
            Repr::Custom(_) => None,
        }
    }
}

impl From<BuiltIn> for Service {
    fn from(b: BuiltIn) -> Service {
        Service(Repr::BuiltIn(b))
    }
}

impl FromStr for Service {
    type Err = Error;
    /// Accepts the six built-in names only; see [`Catalog::service`] for meters.
    fn from_str(s: &str) -> Result<Service> {
        BuiltIn::from_name(s).map(Service::from).ok_or_else(|| {
            Error::invalid(
                "service",
                s,
                "unknown service; expected one of api, storage, bandwidth, compute, database, functions or a defined meter",
            )
        })
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Service({})", self.as_str())
    }
}

impl Serialize for Service {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Service {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Service, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .or_else(|_| Service::custom(&s))
            .map_err(serde::de::Error::custom)
    }
}

/// A meter: a service and the unit its quantities are counted in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    /// The service.
    pub service: Service,
    /// The unit, e.g. `"requests"`.
    pub unit: String,
}

impl Meter {
    /// A user-defined meter. The unit is 1–32 printable characters.
    pub fn new(name: &str, unit: &str) -> Result<Meter> {
        let service = Service::custom(name)?;
        if unit.is_empty() || unit.chars().count() > 32 || unit.chars().any(char::is_control) {
            return Err(Error::invalid(
                "unit",
                unit,
                "must be 1-32 printable characters",
            ));
        }
        Ok(Meter {
            service,
            unit: unit.to_owned(),
        })
    }
}

/// The services an installation knows: the six built-ins plus defined meters.
#[derive(Debug, Clone)]
pub struct Catalog {
    meters: BTreeMap<String, Meter>,
}

impl Default for Catalog {
    fn default() -> Self {
        let meters = BuiltIn::ALL
            .into_iter()
            .map(|b| {
                (
                    b.name().to_owned(),
                    Meter {
                        service: b.into(),
                        unit: b.unit().to_owned(),
                    },
                )
            })
            .collect();
        Catalog { meters }
    }
}

impl Catalog {
    /// Adds (or replaces) a user-defined meter.
    pub fn define(&mut self, meter: Meter) {
        self.meters.insert(meter.service.as_str().to_owned(), meter);
    }

    /// Looks a service up by name; unknown names are an error naming the field.
    pub fn service(&self, name: &str) -> Result<Service> {
        match self.meters.get(name) {
            Some(m) => Ok(m.service.clone()),
            None => Err(Error::invalid(
                "service",
                name,
                format!(
                    "unknown service; known: {}",
                    self.meters
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The unit of a known service.
    pub fn unit(&self, service: &Service) -> Option<&str> {
        self.meters.get(service.as_str()).map(|m| m.unit.as_str())
    }

    /// All known meters, by name.
    pub fn meters(&self) -> impl Iterator<Item = &Meter> {
        self.meters.values()
    }
}
