//! Reading an import file: bytes counted for progress, lines capped at MAX_LINE_BYTES,
//! CSV or NDJSON rows validated into events (ids derived for rows without one), on the
//! parsing thread.

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    io::{BufRead, BufReader, Read},
    rc::Rc,
};

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tally_core::{
    Catalog, CustomerId, EventId, Metadata, Progress, Quantity, UsageEvent, Zone, parse_instant,
};

use super::{ImportFormat, LineError, Parsed};
use crate::{Error, Result};

/// Counts bytes read, for the progress callback.
struct Counting<R> {
    inner: R,
    read: u64,
    progress: Option<Progress>,
    reported: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(p) = &self.progress
            && (self.read - self.reported >= 256 * 1024 || n == 0)
        {
            self.reported = self.read;
            p(self.read);
        }
        Ok(n)
    }
}

/// Gives rows without an id a deterministic one.
#[derive(Default)]
struct IdDeriver {
    seen: HashMap<u64, u32>,
}

impl IdDeriver {
    fn id_for(&mut self, e: &UsageEvent) -> EventId {
        let canonical = format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            e.customer,
            e.service,
            e.quantity,
            e.recorded_at
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            e.metadata.as_str()
        );
        let digest = Sha256::digest(canonical.as_bytes());
        let key = digest
            .first_chunk::<8>()
            .map_or(0, |b| u64::from_le_bytes(*b));
        let n = self.seen.entry(key).or_insert(0);
        *n += 1;
        EventId::derived(format!("{canonical}\u{1f}{n}").as_bytes())
    }
}

struct Fields<'a> {
    event_id: Option<&'a str>,
    customer_id: &'a str,
    service: &'a str,
    quantity: &'a str,
    recorded_at: &'a str,
    metadata: Option<&'a str>,
}

fn build(
    f: Fields<'_>,
    catalog: &Catalog,
    ids: &mut IdDeriver,
) -> Result<UsageEvent, tally_core::Error> {
    let customer = CustomerId::new(f.customer_id)?;
    let service = catalog.service(f.service)?;
    let quantity: Quantity = f.quantity.parse()?;
    let recorded_at = parse_instant("recorded_at", f.recorded_at, Zone::UTC)?;
    let metadata = match f.metadata.map(str::trim) {
        None | Some("") | Some("null") => Metadata::empty(),
        Some(m) => m.parse()?,
    };
    let mut e = UsageEvent::new(customer, service, quantity)
        .at(recorded_at)
        .with_metadata(metadata);
    e.id = match f.event_id.map(str::trim) {
        Some(id) if !id.is_empty() => id.parse()?,
        _ => ids.id_for(&e),
    };
    Ok(e)
}

#[derive(Deserialize)]
struct JsonRow<'a> {
    #[serde(default, borrow)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow)]
    customer_id: &'a RawValue,
    #[serde(borrow)]
    service: &'a RawValue,
    #[serde(borrow)]
    quantity: &'a RawValue,
    #[serde(borrow)]
    recorded_at: &'a RawValue,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

/// A JSON string's content, or a number's exact text (so `0.000000000093` stays exact).
fn scalar(field: &'static str, raw: &RawValue) -> Result<String, String> {
    let text = raw.get();
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text)
            .map_err(|e| format!("invalid {field} {text}: {e}"));
    }
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Ok(text.to_owned());
    }
    Err(format!(
        "invalid {field} {text}: must be a string or a number"
    ))
}

/// Longest line (NDJSON) or record (CSV) accepted, in bytes. A usage row is well under
/// 8 KiB (metadata is capped at 4 KiB); the cap keeps a file without newlines (say
/// `/dev/zero`) from growing memory without bound.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Fails a read once a line grows past [`MAX_LINE_BYTES`] (CSV records may span lines
/// inside quotes, so this bounds the record too), and notes where each line ends.
struct LineCapped<R> {
    inner: R,
    since_newline: usize,
    line: u64,
    offset: u64,
    newlines: Rc<RefCell<Newlines>>,
}

/// Byte offsets of the newlines read but not yet passed by a record, to give each
/// record its physical line (the csv crate's own count is off after `\r\n` rows).
/// The reader runs at most a buffer ahead of the records, so this stays small.
#[derive(Default)]
struct Newlines {
    pending: VecDeque<u64>,
    passed: u64,
}

impl Newlines {
    /// The 1-based line holding byte `at`.
    fn line_of(&mut self, at: u64) -> u64 {
        // A record after `\r\n` is said to start at its `\n`: that newline ends the line
        // before.
        while self.pending.front().is_some_and(|&nl| nl <= at) {
            self.pending.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

impl<R: Read> Read for LineCapped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in buf.get(..n).unwrap_or_default() {
            self.offset += 1;
            if b == b'\n' {
                self.since_newline = 0;
                self.line += 1;
                self.newlines
                    .borrow_mut()
                    .pending
                    .push_back(self.offset - 1);
            } else {
                self.since_newline += 1;
                if self.since_newline > MAX_LINE_BYTES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "line {} is longer than {MAX_LINE_BYTES} bytes",
                            self.line + 1
                        ),
                    ));
                }
            }
        }
        Ok(n)
    }
}

/// An I/O error while reading an import file: an over-long line (see [`LineCapped`])
/// is bad input; anything else a failure to read.
fn file_error(io: &std::io::Error) -> Error {
    if io.kind() == std::io::ErrorKind::InvalidData {
        return Error::invalid("import file", "", io.to_string());
    }
    Error::io(
        "reading the import file",
        std::io::Error::new(io.kind(), io.to_string()),
    )
}

/// Reads one line of at most [`MAX_LINE_BYTES`] into `buf` (without the newline).
/// `Ok(None)` at the end; `Ok(Some(false))` when the line was too long (the rest of it
/// is skipped).
fn read_line_capped(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut fits = true;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(any.then_some(fits));
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if fits {
            if buf.len() + take > MAX_LINE_BYTES {
                fits = false;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk.get(..take).unwrap_or_default());
            }
        }
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(fits));
        }
    }
}

/// Parses an import stream, handing each full batch, bad line or fatal error to `sink`
/// in file order; stops when `sink` returns false. Bad lines do not cut batches short:
/// a file of interleaved good and bad rows is written in full batches.
pub(super) fn parse<R: Read>(
    reader: R,
    format: ImportFormat,
    batch_size: usize,
    catalog: &Catalog,
    progress: Option<Progress>,
    sink: &mut dyn FnMut(Parsed) -> bool,
) {
    let reader = Counting {
        inner: reader,
        read: 0,
        progress,
        reported: 0,
    };
    let mut ids = IdDeriver::default();
    let mut batch = (
        Vec::with_capacity(batch_size),
        Vec::with_capacity(batch_size),
    );
    let push = |e: UsageEvent,
                line: u64,
                batch: &mut (Vec<UsageEvent>, Vec<u64>),
                sink: &mut dyn FnMut(Parsed) -> bool| {
        batch.0.push(e);
        batch.1.push(line);
        if batch.0.len() >= batch_size {
            let (events, lines) = std::mem::replace(
                batch,
                (
                    Vec::with_capacity(batch_size),
                    Vec::with_capacity(batch_size),
                ),
            );
            return sink(Parsed::Batch(events, lines));
        }
        true
    };
    let bad = |line: u64, message: String| Parsed::Bad(LineError { line, message });
    match format {
        ImportFormat::Csv => {
            let newlines = Rc::new(RefCell::new(Newlines::default()));
            let capped = LineCapped {
                inner: reader,
                since_newline: 0,
                line: 0,
                offset: 0,
                newlines: newlines.clone(),
            };
            let line_of = |p: Option<&csv::Position>, hint: u64| {
                p.map_or(hint, |p| newlines.borrow_mut().line_of(p.byte()))
            };
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(capped);
            let headers = match rdr.headers() {
                Ok(h) => h.clone(),
                Err(e) => {
                    let fatal = match e.kind() {
                        csv::ErrorKind::Io(io) => file_error(io),
                        _ => Error::invalid("import header", "", format!("is unreadable: {e}")),
                    };
                    sink(Parsed::Fatal(fatal));
                    return;
                }
            };
            let names: Vec<&str> = headers.iter().map(str::trim).collect();
            let col = |name: &str| names.iter().position(|h| *h == name);
            let (ci, si, qi, ti) = (
                col("customer_id"),
                col("service"),
                col("quantity"),
                col("recorded_at"),
            );
            let (ei, mi) = (col("event_id"), col("metadata"));
            let repeated = names.iter().enumerate().find(|(i, n)| {
                !n.is_empty() && names.get(..*i).is_some_and(|before| before.contains(n))
            });
            if let Some((_, name)) = repeated {
                sink(Parsed::Fatal(Error::invalid(
                    "import header",
                    names.join(","),
                    format!("names column {name} twice"),
                )));
                return;
            }
            let (Some(ci), Some(si), Some(qi), Some(ti)) = (ci, si, qi, ti) else {
                let missing: Vec<&str> = ["customer_id", "service", "quantity", "recorded_at"]
                    .into_iter()
                    .filter(|c| col(c).is_none())
                    .collect();
                sink(Parsed::Fatal(Error::invalid(
                    "import header",
                    names.join(","),
                    format!("missing column(s): {}", missing.join(", ")),
                )));
                return;
            };
            let mut record = csv::ByteRecord::new();
            loop {
                let line_hint = rdr.position().line() + 1;
                match rdr.read_byte_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {
                        let line = line_of(record.position(), line_hint);
                        let field = |i: usize| -> Result<&str, String> {
                            std::str::from_utf8(record.get(i).unwrap_or_default())
                                .map_err(|_| format!("column {} is not valid UTF-8", i + 1))
                        };
                        let opt = |i: Option<usize>| i.map(field).transpose();
                        let built = (|| {
                            let fields = Fields {
                                event_id: opt(ei)?,
                                customer_id: field(ci)?,
                                service: field(si)?,
                                quantity: field(qi)?,
                                recorded_at: field(ti)?,
                                metadata: opt(mi)?,
                            };
                            build(fields, catalog, &mut ids).map_err(|e| e.to_string())
                        })();
                        let ok = match built {
                            Ok(e) => push(e, line, &mut batch, sink),
                            Err(message) => sink(bad(line, message)),
                        };
                        if !ok {
                            return;
                        }
                    }
                    Err(e) => {
                        let line = line_of(e.position(), line_hint);
                        if let csv::ErrorKind::Io(io) = e.kind() {
                            sink(Parsed::Fatal(file_error(io)));
                            return;
                        }
                        if !sink(bad(line, e.to_string())) {
                            return;
                        }
                    }
                }
            }
        }
        ImportFormat::Ndjson => {
            let mut lines = BufReader::with_capacity(256 * 1024, reader);
            let mut buf = Vec::new();
            let mut line = 0u64;
            loop {
                let fits = match read_line_capped(&mut lines, &mut buf) {
                    Ok(None) => break,
                    Ok(Some(fits)) => fits,
                    Err(e) => {
                        sink(Parsed::Fatal(Error::io(
                            format!("reading line {}", line + 1),
                            e,
                        )));
                        return;
                    }
                };
                line += 1;
                if !fits {
                    if !sink(bad(line, format!("is longer than {MAX_LINE_BYTES} bytes"))) {
                        return;
                    }
                    continue;
                }
                let Ok(text) = std::str::from_utf8(&buf) else {
                    if !sink(bad(line, "is not valid UTF-8".into())) {
                        return;
                    }
                    continue;
                };
                // A byte-order mark may open the file (CSV readers strip it too).
                let text = if line == 1 {
                    text.trim_start_matches('\u{feff}')
                } else {
                    text
                };
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let result = serde_json::from_str::<JsonRow<'_>>(text)
                    .map_err(|e| format!("not a usage event object: {e}"))
                    .and_then(|row| {
                        let ev = |f, r: Option<&RawValue>| r.map(|r| scalar(f, r)).transpose();
                        let event_id = ev("event_id", row.event_id)?;
                        let customer_id = scalar("customer_id", row.customer_id)?;
                        let service = scalar("service", row.service)?;
                        let quantity = scalar("quantity", row.quantity)?;
                        let recorded_at = scalar("recorded_at", row.recorded_at)?;
                        let fields = Fields {
                            event_id: event_id.as_deref(),
                            customer_id: &customer_id,
                            service: &service,
                            quantity: &quantity,
                            recorded_at: &recorded_at,
                            metadata: row.metadata.map(RawValue::get),
                        };
                        build(fields, catalog, &mut ids).map_err(|e| e.to_string())
                    });
                let ok = match result {
                    Ok(e) => push(e, line, &mut batch, sink),
                    Err(message) => sink(bad(line, message)),
                };
                if !ok {
                    return;
                }
            }
        }
    }
    if !batch.0.is_empty() {
        sink(Parsed::Batch(batch.0, batch.1));
    }
}

/// Parses a whole import file without a database (with the built-in services only):
/// the events, the rejected lines, and the error that stopped it, if any. For tests
/// and fuzzing of the parser; [`Store::import`] is the way to import.
#[doc(hidden)]
pub fn parse_file(
    input: &[u8],
    format: ImportFormat,
) -> (Vec<UsageEvent>, Vec<LineError>, Option<Error>) {
    let mut out = (Vec::new(), Vec::new(), None);
    parse(input, format, 1_000, &Catalog::default(), None, &mut |p| {
        match p {
            Parsed::Batch(b, _) => out.0.extend(b),
            Parsed::Bad(e) => out.1.push(e),
            Parsed::Fatal(e) => out.2 = Some(e),
        }
        true
    });
    out
}
