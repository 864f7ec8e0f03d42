//! `…/meters/{m}/query` (GET with URL parameters, POST with OpenMeter's
//! `MeterQueryRequest`), `…/subjects` and `…/group-by/{key}/values`: the parameters
//! read into one [`Input`], validated into a [`MeterQuery`], answered in JSON or CSV.

use std::collections::BTreeMap;

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State, rejection::BytesRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tally::{
    CustomerId, TimeRange, Zone,
    chrono::{DateTime, Duration, DurationRound, Utc},
    meters::{MeterQuery, WindowSize},
};

use super::{
    App, bad_request, error_response,
    filters::{self, Filters},
    problem,
};

/// The largest number of windows one query may ask for.
const MAX_WINDOWS: i64 = 100_000;

/// A query's parameters as sent, before validation. `filterCustomerId` is read as
/// `subject`: a Tally customer is its subject.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Input {
    #[serde(default)]
    client_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    window_size: Option<String>,
    window_time_zone: Option<String>,
    #[serde(default)]
    subject: Vec<String>,
    #[serde(default)]
    filter_customer_id: Vec<String>,
    #[serde(default)]
    filter_group_by: BTreeMap<String, Vec<String>>,
    advanced_meter_group_by_filters: Option<Value>,
    #[serde(default)]
    group_by: Vec<String>,
}

impl Input {
    /// From a URL's parameters (repeatable ones repeated; `filterGroupBy[k]=v` as
    /// OpenAPI's deepObject, or `filterGroupBy={…}` whole).
    fn from_url(raw: Option<&str>, only_range: bool) -> Result<Input, Refused> {
        let mut i = Input::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let v = v.into_owned();
            match k.as_ref() {
                "from" => i.from = Some(v),
                "to" => i.to = Some(v),
                "windowSize" if !only_range => i.window_size = Some(v),
                "windowTimeZone" if !only_range => i.window_time_zone = Some(v),
                "subject" if !only_range => i.subject.push(v),
                "filterCustomerId" if !only_range => i.filter_customer_id.push(v),
                "groupBy" if !only_range => i.group_by.push(v),
                "clientId" => i.client_id = Some(v),
                "filterGroupBy" if !only_range => {
                    let object = filters::group_by_object(&v)
                        .map_err(|reason| Refused::new("filterGroupBy", &v, &reason))?;
                    i.filter_group_by.extend(object);
                }
                "advancedMeterGroupByFilters" if !only_range => {
                    let value = serde_json::from_str(&v).map_err(|e| {
                        Refused::new(
                            "advancedMeterGroupByFilters",
                            &v,
                            &format!("is not JSON: {e}"),
                        )
                    })?;
                    i.advanced_meter_group_by_filters = Some(value);
                }
                k => match k
                    .strip_prefix("filterGroupBy[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    Some(dim) if !dim.is_empty() && !only_range => {
                        i.filter_group_by.entry(dim.to_owned()).or_default().push(v);
                    }
                    _ => {
                        return Err(Refused::new(
                            "query",
                            k,
                            "is not a parameter of this request",
                        ));
                    }
                },
            }
        }
        Ok(i)
    }
}

/// A parameter refused: its name, its value and why (a 400 naming them).
#[derive(Debug)]
pub(super) struct Refused {
    field: String,
    value: String,
    reason: String,
}

impl Refused {
    fn new(field: &str, value: &str, reason: &str) -> Refused {
        Refused {
            field: field.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }

    pub(super) fn answer(self, app: &App) -> Response {
        bad_request(app, &self.field, &self.value, &self.reason)
    }
}

/// A validated query, and whether the answer is CSV.
#[derive(Debug)]
pub(super) struct Params {
    pub(super) query: MeterQuery,
    csv: bool,
}

/// An RFC 3339 instant given as parameter `field`.
pub(super) fn instant(field: &str, v: &str) -> Result<DateTime<Utc>, Refused> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Refused::new(field, v, &format!("is not an RFC 3339 instant: {e}")))
}

/// `[from, to)`: `from` defaults to the Unix epoch, `to` to now rounded up to the
/// next minute (OpenMeter answers up to now, truncated to the minute).
fn range(i: &Input, now: DateTime<Utc>) -> Result<TimeRange, Refused> {
    let from = match &i.from {
        Some(v) => instant("from", v)?,
        None => DateTime::UNIX_EPOCH,
    };
    let to = match &i.to {
        Some(v) => instant("to", v)?,
        None => now.duration_trunc(Duration::minutes(1)).unwrap_or(now) + Duration::minutes(1),
    };
    TimeRange::new(from, to).map_err(|e| {
        Refused::new(
            "from",
            &from.to_rfc3339(),
            &tally::Error::from(e).to_string(),
        )
    })
}

fn build(i: Input, headers: &HeaderMap) -> Result<Params, Refused> {
    let now = Utc::now();
    let range = range(&i, now)?;
    let window = match &i.window_size {
        Some(v) => Some(
            v.parse::<WindowSize>()
                .map_err(|e| Refused::new("windowSize", v, &tally::Error::from(e).to_string()))?,
        ),
        None => None,
    };
    let zone = match &i.window_time_zone {
        Some(v) => v
            .parse::<Zone>()
            .map_err(|_| Refused::new("windowTimeZone", v, "is not an IANA zone"))?,
        None => Zone::UTC,
    };
    let per = match window {
        Some(WindowSize::Minute) => Duration::minutes(1),
        Some(WindowSize::Hour) => Duration::hours(1),
        Some(WindowSize::Day) => Duration::days(1),
        _ => Duration::days(28),
    };
    let span = range.to() - range.from();
    if window.is_some() && span.num_seconds() / per.num_seconds().max(1) > MAX_WINDOWS {
        return Err(Refused::new(
            "windowSize",
            &format!("{window:?}"),
            &format!("the range would have more than {MAX_WINDOWS} windows; give a later from"),
        ));
    }
    let mut q = MeterQuery::new(range, now).in_zone(zone);
    if let Some(w) = window {
        q = q.window(w);
    }
    for (field, ids) in [
        ("subject", &i.subject),
        ("filterCustomerId", &i.filter_customer_id),
    ] {
        for s in ids {
            let c =
                CustomerId::new(s.clone()).map_err(|e| Refused::new(field, s, &e.to_string()))?;
            q = q.customer(&c);
        }
    }
    for g in &i.group_by {
        q = q.group_by(g);
    }
    let mut f = Filters::default();
    for (k, v) in i.filter_group_by {
        f.only(&k, v);
    }
    if let Some(adv) = &i.advanced_meter_group_by_filters {
        filters::advanced(adv, &mut f).map_err(|(at, reason)| {
            let field = if at.is_empty() {
                "advancedMeterGroupByFilters".to_owned()
            } else {
                format!("advancedMeterGroupByFilters.{at}")
            };
            Refused::new(&field, &adv.to_string(), &reason)
        })?;
    }
    for (k, values) in &f.include {
        if values.is_empty() {
            // Two filters on one dimension with no value in common: nothing matches,
            // which a filter on a value no event has says exactly.
            q.filters.insert(k.clone(), Vec::new());
        }
        for v in values {
            q = q.filter(k, v);
        }
    }
    for (k, v) in &f.exclude {
        q = q.exclude(&[(k.clone(), v.clone())].into());
    }
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    Ok(Params { query: q, csv })
}

/// `GET …/query`.
pub(super) async fn query_meter(
    State(app): State<App>,
    Path(meter): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = match Input::from_url(raw.as_deref(), false).and_then(|i| build(i, &headers)) {
        Ok(p) => p,
        Err(r) => return r.answer(&app),
    };
    answer(&app, &meter, &p).await
}

/// `POST …/query` with a `MeterQueryRequest` body.
pub(super) async fn query_meter_post(
    State(app): State<App>,
    Path(meter): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match super::body(&app, body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let input: Input = if body.iter().all(u8::is_ascii_whitespace) {
        Input::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(i) => i,
            Err(e) => {
                let text: String = String::from_utf8_lossy(&body).chars().take(80).collect();
                return bad_request(&app, "body", &text, &e.to_string());
            }
        }
    };
    match build(input, &headers) {
        Ok(p) => answer(&app, &meter, &p).await,
        Err(r) => r.answer(&app),
    }
}

async fn answer(app: &App, meter: &str, p: &Params) -> Response {
    let result = match app.tally.query_meter(meter, &p.query).await {
        Ok(r) => r,
        Err(e) => return error_response(app, &e, None),
    };
    if !p.csv {
        return match wire(&result) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => problem(
                app,
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
                Map::new(),
            ),
        };
    }
    let keys: Vec<String> = p
        .query
        .group_by
        .iter()
        .filter(|g| *g != "subject")
        .cloned()
        .collect();
    let mut text = String::from("window_start,window_end,subject");
    for k in &keys {
        text.push(',');
        text.push_str(&csv_cell(k));
    }
    text.push_str(",value\n");
    for row in &result.data {
        text.push_str(&format!(
            "{},{},{}",
            at(&row.window_start),
            at(&row.window_end),
            csv_cell(row.subject.as_deref().unwrap_or(""))
        ));
        for k in &keys {
            text.push(',');
            let v = row.group_by.get(k).cloned().flatten();
            text.push_str(&csv_cell(v.as_deref().unwrap_or("")));
        }
        text.push_str(&format!(",{}\n", row.value.normalize()));
    }
    ([(header::CONTENT_TYPE, "text/csv")], text).into_response()
}

fn at(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(tally::chrono::SecondsFormat::AutoSi, true)
}

/// The result as OpenMeter's `MeterQueryResult`, whose `value` is a JSON number: the
/// exact decimal's digits are written as the number (a float would round them).
fn wire(result: &tally::meters::MeterQueryResult) -> Result<String, serde_json::Error> {
    use serde_json::value::RawValue;
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Row<'a> {
        value: Box<RawValue>,
        window_start: String,
        window_end: String,
        subject: Option<&'a str>,
        group_by: &'a BTreeMap<String, Option<String>>,
    }
    let data = result
        .data
        .iter()
        .map(|r| {
            Ok(Row {
                value: RawValue::from_string(r.value.normalize().to_string())?,
                window_start: at(&r.window_start),
                window_end: at(&r.window_end),
                subject: r.subject.as_deref(),
                group_by: &r.group_by,
            })
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    serde_json::to_string(&json!({
        "from": at(&result.from),
        "to": at(&result.to),
        "windowSize": result.window_size,
        "data": data,
    }))
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The distinct values of `group` in a meter's rows within `from`/`to` (all time by
/// default).
async fn distinct(
    app: &App,
    meter: &str,
    group: &str,
    raw: Option<&str>,
) -> Result<Vec<String>, Response> {
    let input = Input::from_url(raw, true).map_err(|r| r.answer(app))?;
    let now = Utc::now();
    let range = range(&input, now).map_err(|r| r.answer(app))?;
    let q = MeterQuery::new(range, now).group_by(group);
    let r = app
        .tally
        .query_meter(meter, &q)
        .await
        .map_err(|e| error_response(app, &e, None))?;
    let mut values: Vec<String> = r
        .data
        .into_iter()
        .filter_map(|row| {
            if group == "subject" {
                row.subject
            } else {
                row.group_by.get(group).cloned().flatten()
            }
        })
        .collect();
    values.sort();
    values.dedup();
    Ok(values)
}

/// `GET …/subjects`.
pub(super) async fn subjects(
    State(app): State<App>,
    Path(meter): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    match distinct(&app, &meter, "subject", raw.as_deref()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

/// `GET …/group-by/{key}/values`.
pub(super) async fn group_by_values(
    State(app): State<App>,
    Path((meter, key)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Response {
    if key == "subject" {
        return bad_request(
            &app,
            "groupByKey",
            &key,
            "subject is not a group-by key; see /subjects",
        );
    }
    match distinct(&app, &meter, &key, raw.as_deref()).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_sdks_parameters_read_into_one_query() {
        let raw = "from=2026-03-01T00%3A00%3A00.000Z&windowSize=HOUR&windowTimeZone=Asia%2FKolkata\
                   &subject=c1&subject=c2&filterGroupBy=%7B%27model%27%3A%20%27gpt-4o%27%7D&groupBy=model";
        let p = build(
            Input::from_url(Some(raw), false).unwrap(),
            &HeaderMap::new(),
        )
        .unwrap();
        assert_eq!(p.query.window, Some(WindowSize::Hour));
        assert_eq!(p.query.customers.len(), 2);
        assert_eq!(p.query.group_by, ["model"]);
        assert_eq!(
            p.query.filters.get("model"),
            Some(&vec!["gpt-4o".to_owned()])
        );
        let e = Input::from_url(Some("from=2026"), false)
            .and_then(|i| build(i, &HeaderMap::new()))
            .unwrap_err();
        assert_eq!(e.field, "from");
        let e = Input::from_url(Some("bogus=1"), false).unwrap_err();
        assert_eq!((e.field.as_str(), e.value.as_str()), ("query", "bogus"));
    }

    proptest! {
        /// Any query string is read or refused with a reason, never a panic.
        #[test]
        fn the_query_string_parser_never_panics(
            raw in "[a-zA-Z%=&\\[\\]{}':,\\-0-9TZ.+ ]{0,120}",
            pairs in proptest::collection::vec(
                (prop_oneof![
                    Just("from"), Just("to"), Just("windowSize"), Just("windowTimeZone"),
                    Just("subject"), Just("groupBy"), Just("filterGroupBy"),
                    Just("filterGroupBy[m]"), Just("advancedMeterGroupByFilters"),
                    Just("filterCustomerId"), Just("x"),
                ], "\\PC{0,30}"),
                0..6,
            ),
        ) {
            for only_range in [false, true] {
                if let Ok(i) = Input::from_url(Some(&raw), only_range) {
                    let _ = build(i, &HeaderMap::new());
                }
            }
            let text: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            if let Ok(i) = Input::from_url(Some(&text), false) {
                let _ = build(i, &HeaderMap::new());
            }
        }
    }
}
