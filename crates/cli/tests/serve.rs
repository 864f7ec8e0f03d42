//! `tally serve` over raw HTTP: every row of docs/http.md's error table, the meter
//! endpoints, acknowledgment after commit (kill -9 after a `204`), tokens and SIGTERM.
//! Requests are written by hand on a TCP socket, so what is tested is the wire, not a
//! client library's reading of it.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tally_testdb::TestDb;

/// A running `tally serve` on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    addr: String,
    // Kept open: the server's stdout is a pipe that must not close under it.
    _stdout: BufReader<ChildStdout>,
}

/// A response: status, head (lower-cased) and body.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Server {
    fn start(db: &TestDb, flags: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .env("DATABASE_URL", db.url())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .to_owned();
        Server {
            child,
            addr,
            _stdout: stdout,
        }
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        read_reply(&mut s)
    }

    fn get(&self, path: &str) -> Reply {
        self.call("GET", path, &[], b"")
    }

    fn post(&self, path: &str, content_type: &str, body: &str) -> Reply {
        self.call(
            "POST",
            path,
            &[("Content-Type", content_type)],
            body.as_bytes(),
        )
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Reply { status, head, body }
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Asserts a problem body: status, content type, and its extension members.
fn assert_problem(r: &Reply, status: u16, ext: &[(&str, Value)]) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    assert!(
        r.head.contains("content-type: application/problem+json"),
        "{}",
        r.head
    );
    let p = r.json();
    assert_eq!(p["status"], json!(status), "{p}");
    for key in ["type", "title", "detail", "instance"] {
        assert!(p[key].is_string(), "{key} in {p}");
    }
    for (k, v) in ext {
        assert_eq!(&p[*k], v, "{k} in {p}");
    }
    p
}

const BATCH: &str = "application/cloudevents-batch+json";
const ONE: &str = "application/cloudevents+json";

fn event(id: &str, subject: &str, time: &str, data: Value) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "tests", "type": "prompt",
           "subject": subject, "time": time, "data": data})
}

fn tokens_meter(s: &Server) {
    let r = s.post(
        "/api/v1/meters",
        "application/json",
        r#"{"slug": "tokens", "eventType": "prompt", "aggregation": "SUM",
            "valueProperty": "$.tokens", "groupBy": {"model": "$.model"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

fn query(s: &Server, q: &str) -> Value {
    let r = s.get(&format!("/api/v1/meters/tokens/query?{q}"));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[tokio::test]
async fn events_are_stored_once_and_the_meters_answer_in_openmeters_shape() {
    let db = TestDb::new().await.unwrap();
    let s = Server::start(&db, &[]);
    assert_eq!(s.get("/healthz").status, 200);
    tokens_meter(&s);
    let list = s.get("/api/v1/meters").json();
    assert_eq!(list[0]["slug"], "tokens", "{list}");
    let shown = s.get("/api/v1/meters/tokens").json();
    assert_eq!(
        (&shown["aggregation"], &shown["groupBy"]),
        (&json!("SUM"), &json!({"model": "$.model"}))
    );
    // By its id too.
    let id = shown["id"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/api/v1/meters/{id}")).json()["slug"],
        "tokens"
    );

    let one = event(
        "e0",
        "acme",
        "2026-03-30T10:15:00Z",
        json!({"tokens": 0.5, "model": "gpt-4o"}),
    );
    assert_eq!(s.post("/api/v1/events", ONE, &one.to_string()).status, 204);
    let batch = json!([
        event(
            "e1",
            "acme",
            "2026-03-30T10:45:00Z",
            json!({"tokens": 100, "model": "gpt-4o"})
        ),
        event(
            "e2",
            "acme",
            "2026-03-30T11:05:00Z",
            json!({"tokens": 7, "model": "mini"})
        ),
        event(
            "e3",
            "globex",
            "2026-03-30T23:30:00Z",
            json!({"tokens": 1000, "model": "mini"})
        ),
    ])
    .to_string();
    assert_eq!(s.post("/api/v1/events", BATCH, &batch).status, 204);
    // A client retrying after a timeout sends the batch again: counted once.
    assert_eq!(
        s.post("/api/v1/events", "application/json", &batch).status,
        204
    );

    let whole = query(&s, "from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z");
    // The value is a JSON number with the decimal's exact digits.
    assert_eq!(whole["data"][0]["value"], json!(1107.5), "{whole}");
    assert!(
        s.get("/api/v1/meters/tokens/query?from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z")
            .body
            .contains(r#""value":1107.5"#)
    );

    let hourly = query(
        &s,
        "from=2026-03-30T10:00:00Z&to=2026-03-30T12:00:00Z&windowSize=HOUR&subject=acme&groupBy=model",
    );
    let rows: Vec<(String, String, Value)> = hourly["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["windowStart"].as_str().unwrap().to_owned(),
                r["groupBy"]["model"].as_str().unwrap().to_owned(),
                r["value"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("2026-03-30T10:00:00Z".into(), "gpt-4o".into(), json!(100.5)),
            ("2026-03-30T11:00:00Z".into(), "mini".into(), json!(7)),
        ]
    );
    // Days in Kolkata (UTC+5:30): globex's 23:30Z falls on the 31st there.
    let days = query(
        &s,
        "from=2026-03-29T18:30:00Z&to=2026-03-31T18:30:00Z&windowSize=DAY&windowTimeZone=Asia/Kolkata&filterGroupBy%5Bmodel%5D=mini&groupBy=subject",
    );
    let rows: Vec<(&str, &str, &Value)> = days["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["windowStart"].as_str().unwrap(),
                r["subject"].as_str().unwrap(),
                &r["value"],
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("2026-03-29T18:30:00Z", "acme", &json!(7)),
            ("2026-03-30T18:30:00Z", "globex", &json!(1000)),
        ]
    );

    let csv = s.call(
        "GET",
        "/api/v1/meters/tokens/query?from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z&groupBy=model",
        &[("Accept", "text/csv")],
        b"",
    );
    assert!(csv.head.contains("content-type: text/csv"), "{}", csv.head);
    assert_eq!(
        csv.body,
        "window_start,window_end,subject,model,value\n\
         2026-03-30T00:00:00Z,2026-03-31T00:00:00Z,,gpt-4o,100.5\n\
         2026-03-30T00:00:00Z,2026-03-31T00:00:00Z,,mini,1007\n"
    );
    assert_eq!(
        s.get("/api/v1/meters/tokens/subjects").json(),
        json!(["acme", "globex"])
    );
    assert_eq!(
        s.get("/api/v1/meters/tokens/group-by/model/values").json(),
        json!(["gpt-4o", "mini"])
    );

    // The same filters as OpenMeter's clients also send them: filterGroupBy whole
    // (JSON, or the Python SDK's dict), advanced filters, the POST form.
    let range = "from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z";
    for filter in [
        "filterGroupBy=%7B%22model%22%3A%22mini%22%7D",
        "filterGroupBy=%7B%27model%27%3A%20%27mini%27%7D",
        "advancedMeterGroupByFilters=%7B%22model%22%3A%7B%22%24ne%22%3A%22gpt-4o%22%7D%7D",
        "advancedMeterGroupByFilters=%7B%22model%22%3A%7B%22%24in%22%3A%5B%22mini%22%5D%7D%7D",
    ] {
        let r = query(&s, &format!("{range}&{filter}"));
        assert_eq!(r["data"][0]["value"], json!(1007), "{filter}: {r}");
    }
    let r = s.post(
        "/api/v1/meters/tokens/query",
        "application/json",
        r#"{"from": "2026-03-30T00:00:00Z", "to": "2026-03-31T00:00:00Z", "subject": ["acme"],
            "filterGroupBy": {"model": ["mini", "gpt-4o"]}, "groupBy": ["model"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    let values: Vec<&Value> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| &row["value"])
        .collect();
    assert_eq!(values, [&json!(100.5), &json!(7)], "{body}");

    // The newest events first, as OpenMeter's IngestedEvent.
    let listed = s
        .get("/api/v1/events?from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z&subject=acm&limit=2")
        .json();
    let times: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["time"].as_str().unwrap())
        .collect();
    assert_eq!(
        times,
        ["2026-03-30T11:05:00Z", "2026-03-30T10:45:00Z"],
        "{listed}"
    );
    assert_eq!(
        listed[0]["event"]["data"],
        json!({"tokens": 7, "model": "mini"})
    );
    assert_eq!(listed[0]["event"]["type"], "prompt");

    // A new name and description; the meter and its answers are unchanged.
    let r = s.call(
        "PUT",
        "/api/v1/meters/tokens",
        &[("Content-Type", "application/json")],
        br#"{"name": "Tokens", "description": "LLM tokens", "groupBy": {"model": "$.model"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.get("/api/v1/meters/tokens").json()["name"], "Tokens");
    assert_eq!(query(&s, range)["data"][0]["value"], json!(1107.5));

    // What the server did, for Prometheus.
    let m = s.get("/metrics");
    assert!(m.head.contains("content-type: text/plain"), "{}", m.head);
    for line in [
        "tally_events_accepted_total 4",
        "tally_events_duplicate_total 3",
        "tally_ingest_commit_seconds_count 3",
        "tally_events_in_flight 0",
    ] {
        assert!(m.body.lines().any(|l| l == line), "{line} in {}", m.body);
    }

    assert_eq!(
        s.call("DELETE", "/api/v1/meters/tokens", &[], b"").status,
        204
    );
    assert_problem(
        &s.get("/api/v1/meters/tokens"),
        404,
        &[("value", json!("tokens"))],
    );
}

/// OpenMeter's Python SDK from PyPI, unchanged, drives the server through
/// `tests/sdk/openmeter_sdk.py`: a meter of every aggregation, ingest three ways with
/// a retry, queries in two zones with group-by and every filter form checked against a
/// brute force, subjects, values, CSV, update, delete, the event list. `.ci/run`
/// installs the SDK into a virtual environment and names its interpreter in
/// `TALLY_OPENMETER_PYTHON`, with `TALLY_OPENMETER_REQUIRED=1`; elsewhere, without an
/// interpreter, the test says so and passes.
#[tokio::test]
async fn the_openmeter_python_sdk_works_unchanged() {
    let Some(python) = std::env::var_os("TALLY_OPENMETER_PYTHON") else {
        assert!(
            std::env::var_os("TALLY_OPENMETER_REQUIRED").is_none(),
            "TALLY_OPENMETER_REQUIRED is set but TALLY_OPENMETER_PYTHON is not"
        );
        eprintln!(
            "no TALLY_OPENMETER_PYTHON: OpenMeter's SDK is not installed here, nothing to run"
        );
        return;
    };
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "sdk-token\n").unwrap();
    let s = Server::start(&db, &["--token-file", file.to_str().unwrap()]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/openmeter_sdk.py");
    let out = Command::new(python)
        .args([script, &format!("http://{}", s.addr), "sdk-token"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("checks passed"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{stdout}");
}

/// docs/http.md's error table, one request a row.
#[tokio::test]
async fn every_error_is_a_problem_naming_what_was_refused() {
    let db = TestDb::new().await.unwrap();
    let s = Server::start(
        &db,
        &[
            "--max-body-bytes",
            "2000",
            "--body-timeout",
            "1",
            "--header-timeout",
            "1",
        ],
    );
    tokens_meter(&s);
    let good = |id: &str| {
        event(
            id,
            "acme",
            "2026-03-30T10:00:00Z",
            json!({"tokens": 1, "model": "m"}),
        )
    };
    let stored = |s: &Server| {
        query(s, "from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z")["data"]
            .as_array()
            .unwrap()
            .len()
    };

    // A batch with one bad event: 400 naming its index and field; nothing stored.
    let mut bad = good("b1");
    bad["data"]["tokens"] = json!("lots");
    let r = s.post(
        "/api/v1/events",
        BATCH,
        &json!([good("b0"), bad]).to_string(),
    );
    assert_problem(&r, 400, &[("index", json!(1)), ("field", json!("data"))]);
    let mut no_subject = good("b3");
    no_subject["subject"] = json!("");
    let r = s.post(
        "/api/v1/events",
        BATCH,
        &json!([good("b2"), no_subject]).to_string(),
    );
    assert_problem(&r, 400, &[("index", json!(1)), ("field", json!("subject"))]);
    let mut no_type = good("b4");
    no_type.as_object_mut().unwrap().remove("type");
    assert_problem(
        &s.post("/api/v1/events", ONE, &no_type.to_string()),
        400,
        &[("field", json!("type"))],
    );
    let mut bad_time = good("b5");
    bad_time["time"] = json!("yesterday");
    assert_problem(
        &s.post("/api/v1/events", ONE, &bad_time.to_string()),
        400,
        &[("field", json!("time")), ("value", json!("yesterday"))],
    );
    let mut no_value = good("b6");
    no_value["data"] = json!({"model": "m"});
    assert_problem(
        &s.post("/api/v1/events", ONE, &no_value.to_string()),
        400,
        &[("field", json!("data"))],
    );
    assert_problem(
        &s.post("/api/v1/events", ONE, r#"{"id": "x", "#),
        400,
        &[("field", json!("body"))],
    );
    assert_eq!(stored(&s), 0, "nothing of a refused request is stored");

    // The same (source, id) with another payload: a conflict, the first one stays.
    assert_eq!(
        s.post("/api/v1/events", ONE, &good("c1").to_string())
            .status,
        204
    );
    let mut changed = good("c1");
    changed["data"]["tokens"] = json!(2);
    let r = s.post(
        "/api/v1/events",
        BATCH,
        &json!([good("c2"), changed]).to_string(),
    );
    assert_problem(
        &r,
        409,
        &[
            ("index", json!(1)),
            ("field", json!("id")),
            ("value", json!("c1")),
            ("conflicts", json!([1])),
        ],
    );

    // A dimension combination past the meter's cardinality limit.
    let r = s.post(
        "/api/v1/meters",
        "application/json",
        r#"{"slug": "narrow", "eventType": "prompt", "aggregation": "COUNT",
            "groupBy": {"model": "$.model"}, "cardinalityLimit": 1}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let mut other_model = good("d1");
    other_model["data"]["model"] = json!("other");
    let r = s.post(
        "/api/v1/events",
        BATCH,
        &json!([good("d0"), other_model]).to_string(),
    );
    let p = assert_problem(&r, 400, &[("index", json!(1))]);
    assert!(
        p["detail"].as_str().unwrap().contains("cardinality limit"),
        "{p}"
    );

    assert_problem(&s.post("/api/v1/events", "text/plain", "{}"), 415, &[]);
    let big = Value::from(vec![good("big"); 40]).to_string();
    assert!(big.len() > 2000);
    assert_problem(&s.post("/api/v1/events", BATCH, &big), 413, &[]);

    // A client that announces a body and does not send it is cut off.
    let mut slow = TcpStream::connect(&s.addr).unwrap();
    write!(
        slow,
        "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: {ONE}\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    let started = Instant::now();
    assert_problem(&read_reply(&mut slow), 408, &[]);
    assert!(started.elapsed() < Duration::from_secs(20));
    // One that never finishes its headers is disconnected.
    let mut slower = TcpStream::connect(&s.addr).unwrap();
    slower
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(slower, "POST /api/v1/events HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = slower.read_to_end(&mut rest);
    assert!(
        closed.is_ok() && started.elapsed() < Duration::from_secs(10),
        "{closed:?} after {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&rest)
    );
    assert!(!String::from_utf8_lossy(&rest).contains(" 20"), "{rest:?}");

    // Meters: a bad definition, a duplicate slug, an unknown one.
    assert_problem(
        &s.post(
            "/api/v1/meters",
            "application/json",
            r#"{"slug": "x", "eventType": "prompt", "aggregation": "SUM"}"#,
        ),
        400,
        &[],
    );
    assert_problem(
        &s.post(
            "/api/v1/meters",
            "application/json",
            r#"{"slug": "tokens", "eventType": "prompt", "aggregation": "COUNT"}"#,
        ),
        // OpenMeter's createMeter has no 409: a taken slug is a bad request.
        400,
        &[("field", json!("slug")), ("value", json!("tokens"))],
    );
    assert_problem(
        &s.get("/api/v1/meters/nope/query"),
        404,
        &[("field", json!("meter"))],
    );
    // A service is a built-in meter: queried by its name, without dimensions.
    let api = s.get("/api/v1/meters/api/query?windowSize=DAY");
    assert_eq!((api.status, &api.json()["data"]), (200, &json!([])));
    assert_problem(
        &s.get("/api/v1/meters/api/query?groupBy=model"),
        400,
        &[("field", json!("groupBy")), ("value", json!("model"))],
    );

    // Query parameters are validated, naming the parameter.
    for (q, field) in [
        ("from=monday", "from"),
        ("windowSize=WEEK", "windowSize"),
        ("windowTimeZone=Mars/Olympus", "windowTimeZone"),
        ("from=2026-03-31T00:00:00Z&to=2026-03-30T00:00:00Z", "from"),
        ("groupBy=colour", "groupBy"),
        ("nonsense=1", "query"),
        ("from=2000-01-01T00:00:00Z&windowSize=MINUTE", "windowSize"),
    ] {
        let r = s.get(&format!("/api/v1/meters/tokens/query?{q}"));
        assert_problem(&r, 400, &[("field", json!(field))]);
    }

    // What Tally does not serve of OpenMeter's API, and what is not an API at all.
    let p = assert_problem(&s.get("/api/v1/customers"), 501, &[]);
    assert!(p["detail"].as_str().unwrap().contains("/api/v1/customers"));
    assert_problem(&s.get("/nowhere"), 404, &[]);

    // The filters and the POST form of the query, named down to the operator.
    for (q, field) in [
        ("filterGroupBy=%7B%27model%27%3A", "filterGroupBy"),
        ("filterGroupBy=%5B%22m%22%5D", "filterGroupBy"),
        (
            "advancedMeterGroupByFilters=%7B",
            "advancedMeterGroupByFilters",
        ),
        (
            "advancedMeterGroupByFilters=%7B%22model%22%3A%7B%22%24like%22%3A%22g%25%22%7D%7D",
            "advancedMeterGroupByFilters.model.$like",
        ),
        ("filterGroupBy%5Bcolour%5D=red", "filterGroupBy"),
    ] {
        let r = s.get(&format!("/api/v1/meters/tokens/query?{q}"));
        assert_problem(&r, 400, &[("field", json!(field))]);
    }
    for (body, field) in [
        (r#"{"from": "#, "body"),
        (r#"{"window": "DAY"}"#, "body"),
        (r#"{"windowSize": "WEEK"}"#, "windowSize"),
        (
            r#"{"advancedMeterGroupByFilters": {"model": {"$eq": 1}}}"#,
            "advancedMeterGroupByFilters.model.$eq",
        ),
    ] {
        let r = s.post("/api/v1/meters/tokens/query", "application/json", body);
        assert_problem(&r, 400, &[("field", json!(field))]);
    }

    // A meter's update: name and description only, its dimensions cannot change.
    let put = |path: &str, body: &str| {
        s.call(
            "PUT",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    assert_problem(
        &put(
            "/api/v1/meters/tokens",
            r#"{"groupBy": {"colour": "$.colour"}}"#,
        ),
        400,
        &[("field", json!("groupBy"))],
    );
    assert_problem(
        &put("/api/v1/meters/tokens", r#"{"slug": "other"}"#),
        400,
        &[("field", json!("meter"))],
    );
    assert_problem(
        &put("/api/v1/meters/tokens", r#"{"name": ""}"#),
        400,
        &[("field", json!("name"))],
    );
    assert_problem(
        &put("/api/v1/meters/nope", r#"{"name": "n"}"#),
        404,
        &[("field", json!("meter"))],
    );

    // The event list's parameters.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("from=soon", "from"),
        ("ingestedAtFrom=2026-03-30T00:00:00Z", "ingestedAtFrom"),
        ("customerId=", "customerId"),
        ("page=2", "query"),
    ] {
        let r = s.get(&format!("/api/v1/events?{q}"));
        assert_problem(&r, 400, &[("field", json!(field))]);
    }
    let total = query(&s, "from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z");
    assert_eq!(
        total["data"][0]["value"],
        json!(2),
        "c1 and c2, once each: {total}"
    );
}

#[tokio::test]
async fn a_token_file_guards_every_api_route_and_is_reloaded_on_sighup() {
    let db = TestDb::new().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "first\n\n  second  \n").unwrap();
    let s = Server::start(&db, &["--token-file", file.to_str().unwrap()]);
    let with = |token: &str| {
        s.call(
            "GET",
            "/api/v1/meters",
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .status
    };
    assert_problem(&s.get("/api/v1/meters"), 401, &[]);
    assert_problem(&s.post("/api/v1/events", ONE, "{}"), 401, &[]);
    assert_eq!(
        (with("first"), with("second"), with("secon")),
        (200, 200, 401)
    );
    assert_eq!(s.get("/healthz").status, 200, "health needs no token");

    std::fs::write(&file, "third\n").unwrap();
    s.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while with("third") != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the tokens"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(with("first"), 401);

    // A non-loopback address needs a token file.
    let out = common::tally(&db, &["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));
}

#[tokio::test]
async fn a_kill_9_after_204_loses_nothing_and_sigterm_exits_cleanly() {
    let db = TestDb::new().await.unwrap();
    let mut s = Server::start(&db, &[]);
    tokens_meter(&s);
    for b in 0..20 {
        let batch: Vec<Value> = (0..25)
            .map(|i| {
                event(
                    &format!("k{b}-{i}"),
                    &format!("c{}", i % 3),
                    "2026-03-30T10:00:00Z",
                    json!({"tokens": 2, "model": "m"}),
                )
            })
            .collect();
        let r = s.post("/api/v1/events", BATCH, &Value::from(batch).to_string());
        assert_eq!(r.status, 204, "{}", r.body);
    }
    s.signal("-KILL");
    let _ = s.child.wait();

    let s = Server::start(&db, &[]);
    let q = query(&s, "from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z");
    assert_eq!(q["data"][0]["value"], json!(1000), "{q}");
    // The library reads the same.
    assert_eq!(db.tally().verify().await.unwrap().events, 500);

    let mut s = s;
    s.signal("-TERM");
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The value of a metric line of `/metrics` (0 when absent).
fn metric(s: &Server, name: &str) -> i64 {
    let m = s.get("/metrics");
    m.body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn wait_for(s: &Server, name: &str, want: i64) {
    let started = Instant::now();
    while metric(s, name) != want {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name} never reached {want} (it is {})",
            metric(s, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Group commit: requests that arrive while a transaction is being written share the
/// next one, and a refused request in a shared transaction refuses only itself. The
/// writers are held by locking the raw events table from another session, so which
/// requests wait together is known.
#[tokio::test]
async fn concurrent_requests_share_a_transaction_and_a_bad_one_refuses_only_itself() {
    let db = TestDb::new().await.unwrap();
    let s = std::sync::Arc::new(Server::start(&db, &["--writers", "1"]));
    tokens_meter(&s);
    let (locker, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let batch = |first: usize, n: usize| {
        let events: Vec<Value> = (first..first + n)
            .map(|i| {
                event(
                    &format!("g{i}"),
                    &format!("c{}", i % 3),
                    "2026-03-30T10:00:00Z",
                    json!({"tokens": i, "model": "m"}),
                )
            })
            .collect();
        Value::from(events).to_string()
    };
    let post = |body: String| {
        let s = s.clone();
        std::thread::spawn(move || s.post("/api/v1/events", BATCH, &body))
    };
    let mut want = 0;
    for round in 0..2 {
        locker
            .batch_execute("BEGIN; LOCK TABLE usage_events IN EXCLUSIVE MODE")
            .await
            .unwrap();
        // The first request holds the one writer, waiting for the lock.
        let base = round * 1000;
        let first = post(batch(base, 1));
        want += base;
        wait_for(&s, "tally_events_in_flight", 1);
        let mut rest: Vec<_> = (1..=10)
            .map(|r| {
                want += (base + r * 10..base + r * 10 + 10).sum::<usize>();
                post(batch(base + r * 10, 10))
            })
            .collect();
        let mut queued = 101;
        if round == 0 {
            let mut bad: Value = serde_json::from_str(&batch(base + 500, 2)).unwrap();
            bad[1]["data"] = json!({"model": "m"});
            rest.push(std::thread::spawn({
                let s = s.clone();
                move || s.post("/api/v1/events", BATCH, &bad.to_string())
            }));
            queued += 2;
        }
        wait_for(&s, "tally_events_in_flight", queued);
        std::thread::sleep(Duration::from_millis(100));
        let transactions = metric(&s, "tally_ingest_transactions_total");
        locker.batch_execute("COMMIT").await.unwrap();
        assert_eq!(first.join().unwrap().status, 204);
        let mut replies: Vec<Reply> = rest.into_iter().map(|t| t.join().unwrap()).collect();
        if round == 0 {
            let bad = replies.pop().unwrap();
            assert_problem(&bad, 400, &[("index", json!(1)), ("field", json!("data"))]);
        }
        for r in &replies {
            assert_eq!(r.status, 204, "{}", r.body);
        }
        let after = metric(&s, "tally_ingest_transactions_total");
        if round == 0 {
            // The group held the bad request: rolled back, written a request at a time.
            assert_eq!(after - transactions, 1 + 10);
            assert_eq!(metric(&s, "tally_ingest_group_splits_total"), 1);
        } else {
            // The first request alone, then the ten waiting in one transaction.
            assert_eq!(after - transactions, 2);
            assert_eq!(metric(&s, "tally_ingest_group_splits_total"), 1);
        }
    }
    let total = query(&s, "from=2026-03-30T00:00:00Z&to=2026-03-31T00:00:00Z");
    assert_eq!(total["data"][0]["value"], json!(want), "{total}");
    assert_eq!(metric(&s, "tally_events_accepted_total"), 202);
}

/// docs/http.md's 503 row: a database that goes away is "unavailable", for ingest,
/// reads and `/healthz` alike (a retry later succeeds; nothing was acknowledged).
#[tokio::test]
async fn a_database_that_goes_away_is_503_and_healthz_says_so() {
    let cluster = tally_testdb::Cluster::private().unwrap();
    let db = TestDb::new_on(&cluster).await.unwrap();
    let s = Server::start(&db, &[]);
    tokens_meter(&s);
    assert_eq!(s.get("/healthz").status, 200);
    cluster.stop();
    assert_problem(&s.get("/healthz"), 503, &[]);
    let one = event(
        "gone",
        "acme",
        "2026-03-30T10:00:00Z",
        json!({"tokens": 1, "model": "m"}),
    );
    assert_problem(&s.post("/api/v1/events", ONE, &one.to_string()), 503, &[]);
    assert_problem(&s.get("/api/v1/meters/tokens/query"), 503, &[]);
}
