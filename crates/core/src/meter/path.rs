//! The JSONPath subset a meter reads an event's payload with: `$` then any number of
//! `.name` (a letter or `_`, then letters, digits, `_` or `-`), `["key"]` or `['key']`
//! (any key, JSON string escapes inside double quotes) and `[N]` (an array index).
//! Nothing else (no wildcards, filters, slices or recursive descent): a meter reads one
//! value per event, and a path that could name several would make that ambiguous.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{Error, Result};

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// A path into an event's JSON payload (see the module docs for the subset).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl JsonPath {
    /// The longest path text accepted.
    pub const MAX_LEN: usize = 256;

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The JSON value the path names in `root` (a JSON text), as raw text; `None` when
    /// a step is missing (no such key, index past the end, or a step into a scalar).
    pub fn find<'a>(&self, root: &'a RawValue) -> Option<&'a RawValue> {
        Self::find_from(&self.steps, root)
    }

    /// The first step when it is a key (what [`super::Payload`] looks up in its parsed
    /// top level), and the path after it.
    pub(crate) fn first_key(&self) -> Option<(&str, &[Step])> {
        match self.steps.split_first() {
            Some((Step::Key(k), rest)) => Some((k, rest)),
            _ => None,
        }
    }

    pub(crate) fn find_from<'a>(rest: &[Step], mut at: &'a RawValue) -> Option<&'a RawValue> {
        for step in rest {
            at = match step {
                Step::Key(k) => child(at, k)?,
                Step::Index(i) => {
                    if !at.get().starts_with('[') {
                        return None;
                    }
                    let items: Vec<&RawValue> = serde_json::from_str(at.get()).ok()?;
                    items.get(*i).copied()?
                }
            };
        }
        Some(at)
    }
}

fn child<'a>(at: &'a RawValue, key: &str) -> Option<&'a RawValue> {
    if !at.get().starts_with('{') {
        return None;
    }
    // The last of a repeated key wins, as in jsonb.
    let map: Vec<(std::borrow::Cow<'a, str>, &'a RawValue)> =
        serde_json::from_str::<KeyValues<'a>>(at.get()).ok()?.0;
    map.into_iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// An object's members in order, borrowed where their keys need no unescaping.
pub(crate) struct KeyValues<'a>(pub(crate) Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for KeyValues<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = KeyValues<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) =
                    map.next_entry::<std::borrow::Cow<'de, str>, &'de RawValue>()?
                {
                    out.push((k, v));
                }
                Ok(KeyValues(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl FromStr for JsonPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<JsonPath> {
        let bad = |reason: &str| Error::invalid("path", s, reason.to_owned());
        if s.len() > Self::MAX_LEN {
            return Err(bad("is longer than 256 bytes"));
        }
        let Some(mut rest) = s.strip_prefix('$') else {
            return Err(bad(
                "a path starts with $ (for example $.tokens or $[\"model\"])",
            ));
        };
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after
                    .char_indices()
                    .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
                    .map_or(after.len(), |(i, _)| i);
                let name = after.get(..end).unwrap_or_default();
                if !name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                {
                    return Err(bad(
                        "after . comes a name (a letter or _, then letters, digits, _ or -); use [\"key\"] for other keys",
                    ));
                }
                steps.push(Step::Key(name.to_owned()));
                rest = after.get(end..).unwrap_or_default();
            } else if let Some(after) = rest.strip_prefix('[') {
                let (step, len) = bracket(after).ok_or_else(|| {
                    bad("a bracket holds a quoted key or an index: [\"key\"], ['key'] or [0]")
                })?;
                steps.push(step);
                rest = after.get(len..).unwrap_or_default();
            } else {
                return Err(bad(
                    "only .name, [\"key\"] and [N] steps are supported (no wildcards, filters or ..)",
                ));
            }
        }
        Ok(JsonPath {
            text: s.to_owned(),
            steps,
        })
    }
}

/// A bracket step after its `[`: the step and how many bytes it took, `]` included.
fn bracket(s: &str) -> Option<(Step, usize)> {
    let close = |body_end: usize| -> Option<usize> {
        s.get(body_end..)?.starts_with(']').then_some(body_end + 1)
    };
    match s.as_bytes().first()? {
        b'"' => {
            // A JSON string: find its end, honouring escapes.
            let mut escaped = false;
            let mut end = None;
            for (i, c) in s.char_indices().skip(1) {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end?;
            let key: String = serde_json::from_str(s.get(..=end)?).ok()?;
            Some((Step::Key(key), close(end + 1)?))
        }
        b'\'' => {
            let end = s.get(1..)?.find('\'')? + 1;
            let key = s.get(1..end)?;
            if key.contains('\\') {
                return None;
            }
            Some((Step::Key(key.to_owned()), close(end + 1)?))
        }
        b'0'..=b'9' => {
            let end = s.find(|c: char| !c.is_ascii_digit())?;
            let digits = s.get(..end)?;
            if digits.len() > 1 && digits.starts_with('0') {
                return None;
            }
            Some((Step::Index(digits.parse().ok()?), close(end)?))
        }
        _ => None,
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for JsonPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for JsonPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn the_subset_parses_and_finds() {
        let doc = raw(r#"{"a":{"b":[10,{"c d":"x"}]},"tokens":5,"a-b":1}"#);
        let find = |p: &str| {
            p.parse::<JsonPath>()
                .unwrap()
                .find(&doc)
                .map(|v| v.get().to_owned())
        };
        assert_eq!(find("$.tokens").as_deref(), Some("5"));
        assert_eq!(find("$.a.b[0]").as_deref(), Some("10"));
        assert_eq!(find(r#"$.a.b[1]["c d"]"#).as_deref(), Some(r#""x""#));
        assert_eq!(find("$.a.b[1]['c d']").as_deref(), Some(r#""x""#));
        assert_eq!(find("$.a-b").as_deref(), Some("1"));
        assert_eq!(find("$.missing"), None);
        assert_eq!(find("$.tokens.deeper"), None);
        assert_eq!(find("$.a.b[7]"), None);
        assert_eq!(find("$").as_deref(), Some(doc.get()));
    }

    #[test]
    fn anything_else_is_refused_naming_the_path() {
        for bad in [
            "",
            "tokens",
            "$.",
            "$..a",
            "$.*",
            "$[*]",
            "$[?(@.a)]",
            "$.1a",
            "$[01]",
            "$[\"a\"",
            "$['a",
            "$.a b",
            "$[0:2]",
        ] {
            let e = bad.parse::<JsonPath>().unwrap_err();
            assert_eq!(e.field(), Some("path"), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<JsonPath>();
        }

        #[test]
        fn finding_never_panics(p in "\\$(\\.[a-z]{1,3}|\\[[0-3]\\]|\\[\"[a-z]{0,2}\"\\]){0,4}", doc in "\\PC{0,60}") {
            let path: JsonPath = p.parse().unwrap();
            if let Ok(v) = serde_json::from_str::<Box<RawValue>>(&doc) {
                let _ = path.find(&v);
            }
        }
    }
}
