//! The dimension filters of a meter query as OpenMeter's clients send them:
//! `filterGroupBy` as one object (JSON, or the `str()` of a Python dict, which is what
//! OpenMeter's Python SDK puts in the URL) and `advancedMeterGroupByFilters` (a JSON
//! object of `FilterString`s, of which `$eq`, `$ne`, `$in` and `$nin` are served).
//! Pure functions: every input is refused with a reason, never a panic (proptested).

use std::collections::BTreeMap;

use serde_json::Value;

/// The values each dimension may have (one of them).
pub(super) type Include = BTreeMap<String, Vec<String>>;

/// Dimension filters: values a dimension must have one of, and values it must not have.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Filters {
    pub(super) include: Include,
    pub(super) exclude: Vec<(String, String)>,
}

impl Filters {
    /// Only events whose `dim` is one of `values`; given twice for one dimension, an
    /// event must satisfy both (the values in both lists).
    pub(super) fn only(&mut self, dim: &str, values: Vec<String>) {
        match self.include.get_mut(dim) {
            Some(v) => v.retain(|x| values.contains(x)),
            None => {
                self.include.insert(dim.to_owned(), values);
            }
        }
    }
}

/// `filterGroupBy` given whole: a JSON object, or a Python dict literal, of strings
/// (or lists of strings: one of them).
pub(super) fn group_by_object(text: &str) -> Result<Include, String> {
    let value = match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(json) => python_dict(text).map_err(|py| {
            format!("is neither a JSON object ({json}) nor a Python dict of strings ({py})")
        })?,
    };
    let Value::Object(map) = value else {
        return Err("is not an object of dimension names to values".into());
    };
    let mut out = Include::new();
    for (k, v) in map {
        let values = match v {
            Value::String(s) => vec![s],
            Value::Array(a) => a
                .into_iter()
                .map(|x| match x {
                    Value::String(s) => Ok(s),
                    _ => Err(format!("{k}: the values are strings")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err(format!("{k}: the value is a string or a list of strings")),
        };
        out.insert(k, values);
    }
    Ok(out)
}

/// `advancedMeterGroupByFilters`: `{dimension: {"$eq": v} | {"$in": [..]} | {"$ne": v}
/// | {"$nin": [..]}}`, one operator each. The error is the offending key and why.
pub(super) fn advanced(value: &Value, into: &mut Filters) -> Result<(), (String, String)> {
    let Value::Object(map) = value else {
        return Err((
            String::new(),
            "is not an object of dimension names to filters".into(),
        ));
    };
    for (dim, filter) in map {
        let Value::Object(ops) = filter else {
            return Err((
                dim.clone(),
                "the filter is an object such as {\"$eq\": \"v\"}".into(),
            ));
        };
        let mut ops = ops.iter();
        let (Some((op, arg)), None) = (ops.next(), ops.next()) else {
            return Err((dim.clone(), "give exactly one operator".into()));
        };
        let strings = |a: &Value| -> Result<Vec<String>, (String, String)> {
            match a {
                Value::String(s) if op == "$eq" || op == "$ne" => Ok(vec![s.clone()]),
                Value::Array(xs) if op == "$in" || op == "$nin" => xs
                    .iter()
                    .map(|x| {
                        x.as_str().map(str::to_owned).ok_or_else(|| {
                            (format!("{dim}.{op}"), "the values are strings".to_owned())
                        })
                    })
                    .collect(),
                _ => Err((
                    format!("{dim}.{op}"),
                    if op.ends_with("in") {
                        "takes a list of strings".into()
                    } else {
                        "takes a string".into()
                    },
                )),
            }
        };
        match op.as_str() {
            "$eq" | "$in" => into.only(dim, strings(arg)?),
            "$ne" | "$nin" => {
                for v in strings(arg)? {
                    into.exclude.push((dim.clone(), v));
                }
            }
            other => {
                return Err((
                    format!("{dim}.{other}"),
                    "is not served: Tally filters dimensions with $eq, $ne, $in and $nin".into(),
                ));
            }
        }
    }
    Ok(())
}

/// A Python dict literal of string keys and string (or list of string) values, as
/// `str(dict)` writes it, read as the JSON value it stands for.
fn python_dict(text: &str) -> Result<Value, String> {
    let mut p = Py {
        s: text.chars().collect(),
        i: 0,
    };
    p.ws();
    p.eat('{')?;
    let entries = p.items('}', |p| {
        let k = p.string()?;
        p.ws();
        p.eat(':')?;
        p.ws();
        let v = if p.peek_is('[') {
            p.eat('[')?;
            Value::Array(p.items(']', |p| p.string().map(Value::String))?)
        } else {
            Value::String(p.string()?)
        };
        Ok((k, v))
    })?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text at character {}", p.i));
    }
    Ok(Value::Object(entries.into_iter().collect()))
}

struct Py {
    s: Vec<char>,
    i: usize,
}

impl Py {
    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn peek_is(&self, c: char) -> bool {
        self.peek() == Some(c)
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: char) -> Result<(), String> {
        if self.peek_is(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {c:?} at character {}", self.i))
        }
    }

    /// `item, item, …` up to and through `close` (none is fine; no trailing comma).
    fn items<T>(
        &mut self,
        close: char,
        mut item: impl FnMut(&mut Py) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut out = Vec::new();
        self.ws();
        if !self.peek_is(close) {
            loop {
                self.ws();
                out.push(item(self)?);
                self.ws();
                if !self.peek_is(',') {
                    break;
                }
                self.eat(',')?;
            }
        }
        self.ws();
        self.eat(close).map(|()| out)
    }

    fn hex(&mut self, digits: usize) -> Result<char, String> {
        let mut n: u32 = 0;
        for _ in 0..digits {
            let d = self
                .peek()
                .and_then(|c| c.to_digit(16))
                .ok_or_else(|| format!("a bad escape at character {}", self.i))?;
            n = n * 16 + d;
            self.i += 1;
        }
        char::from_u32(n).ok_or_else(|| format!("\\x{n:x} is not a character"))
    }

    /// A quoted string, '…' or "…", with Python's escapes.
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(format!("expected a quoted string at character {}", self.i)),
        };
        self.i += 1;
        let mut out = String::new();
        loop {
            let c = self.peek().ok_or("an unterminated string")?;
            self.i += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let e = self.peek().ok_or("an unterminated escape")?;
                    self.i += 1;
                    out.push(match e {
                        '\\' | '\'' | '"' => e,
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'x' => self.hex(2)?,
                        'u' => self.hex(4)?,
                        'U' => self.hex(8)?,
                        other => return Err(format!("the escape \\{other} is not read")),
                    });
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_python_sdks_dict_and_json_read_alike() {
        let want: Include = [("model".to_owned(), vec!["gpt-4o".to_owned()])].into();
        assert_eq!(group_by_object("{'model': 'gpt-4o'}").unwrap(), want);
        assert_eq!(group_by_object(r#"{"model": "gpt-4o"}"#).unwrap(), want);
        assert_eq!(
            group_by_object(r#"{'a': "it's", 'b': ['x', 'y\'z'], 'c': '\xe9\u20ac'}"#).unwrap(),
            [
                ("a".to_owned(), vec!["it's".to_owned()]),
                ("b".to_owned(), vec!["x".to_owned(), "y'z".to_owned()]),
                ("c".to_owned(), vec!["é€".to_owned()]),
            ]
            .into()
        );
        assert_eq!(group_by_object("{}").unwrap(), Include::new());
        for bad in [
            "",
            "{",
            "{'a'}",
            "{'a': 1}",
            "['a']",
            "{'a': 'b'} x",
            "{'a': '\\q'}",
        ] {
            assert!(group_by_object(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn advanced_filters_map_to_only_and_not() {
        let mut f = Filters::default();
        advanced(
            &json!({"model": {"$in": ["a", "b"]}, "region": {"$ne": "eu"}, "tier": {"$nin": ["x", "y"]}}),
            &mut f,
        )
        .unwrap();
        f.only("model", vec!["b".into(), "c".into()]);
        assert_eq!(
            f.include,
            [("model".to_owned(), vec!["b".to_owned()])].into()
        );
        assert_eq!(
            f.exclude,
            vec![
                ("region".to_owned(), "eu".to_owned()),
                ("tier".to_owned(), "x".to_owned()),
                ("tier".to_owned(), "y".to_owned())
            ]
        );
        for (bad, field) in [
            (json!({"m": {"$like": "a%"}}), "m.$like"),
            (json!({"m": {"$eq": "a", "$ne": "b"}}), "m"),
            (json!({"m": {"$in": "a"}}), "m.$in"),
            (json!({"m": {"$eq": 3}}), "m.$eq"),
            (json!({"m": "a"}), "m"),
            (json!(["m"]), ""),
        ] {
            let e = advanced(&bad, &mut Filters::default()).unwrap_err();
            assert_eq!(e.0, field, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn the_filter_parsers_never_panic(s in "\\PC{0,40}", t in "[{}\\[\\]'\",: \\\\xuU0-9a-f]{0,40}") {
            let _ = group_by_object(&s);
            let _ = group_by_object(&t);
            if let Ok(v) = serde_json::from_str::<Value>(&s) {
                let _ = advanced(&v, &mut Filters::default());
            }
        }
    }
}
