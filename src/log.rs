//! `kafkafs log`: the journal as a change stream — every record as a line
//! of text or JSON (position, sequence numbers, writer, time, operation,
//! paths, sizes), filtered by path prefix, time range and operation.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::error::JournalError;
use crate::journal::{Message, Source};
use crate::op::hex;
use crate::op::{Op, RelPath, Timestamp};
use crate::record::{Record, DEFAULT_MAX_RECORD_BYTES};

/// Which records to print, and how.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// Only records touching a path under this prefix (either path of a
    /// rename or link).
    pub path: Option<RelPath>,
    /// Only records at or after / at or before these times.
    pub since: Option<Timestamp>,
    /// Stop at records after this time.
    pub until: Option<Timestamp>,
    /// Only these operations (by name: create, write, rename, ...).
    pub ops: Vec<String>,
    /// JSON lines instead of text.
    pub json: bool,
    /// Keep printing new records instead of stopping at the end.
    pub follow: bool,
}

/// Why `kafkafs log` stopped.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading the topic failed.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Prints the topic's records from its beginning; returns how many were
/// printed.
pub fn run(
    source: &mut dyn Source,
    options: &LogOptions,
    out: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<u64, LogError> {
    let partitions = source.partitions();
    let mut starts = Vec::new();
    for p in 0..partitions {
        starts.push((p, source.watermarks(p)?.0));
    }
    source.assign(&starts)?;
    let mut next: Vec<i64> = starts.iter().map(|s| s.1).collect();
    let held = vec![false; partitions as usize];
    let mut printed = 0;
    while !stop.load(Ordering::Relaxed) {
        match source.poll(Duration::from_millis(200))? {
            Some(m) => {
                next[m.partition as usize] = m.offset + 1;
                if let Some(line) = render(&m, options) {
                    writeln!(out, "{line}")?;
                    printed += 1;
                }
            }
            None if !options.follow && source.caught_up(&next, &held)? => break,
            None => out.flush()?,
        }
    }
    out.flush()?;
    Ok(printed)
}

/// The line for one message, if it passes the filters.
fn render(m: &Message, o: &LogOptions) -> Option<String> {
    let rec = match Record::decode_from(&m.payload, DEFAULT_MAX_RECORD_BYTES, m.partition) {
        Ok(r) => r,
        // An undecodable record matches no filter, so it shows without any.
        Err(e)
            if o.path.is_none() && o.ops.is_empty() && o.since.is_none() && o.until.is_none() =>
        {
            return Some(if o.json {
                format!(
                    "{{\"partition\":{},\"offset\":{},\"error\":{}}}",
                    m.partition,
                    m.offset,
                    json_str(e.to_string().as_bytes())
                )
            } else {
                format!("{}:{} undecodable: {e}", m.partition, m.offset)
            });
        }
        Err(_) => return None,
    };
    if !passes(&rec, o) {
        return None;
    }
    Some(if o.json {
        json_line(m, &rec)
    } else {
        text_line(m, &rec)
    })
}

fn passes(rec: &Record, o: &LogOptions) -> bool {
    if o.since.is_some_and(|t| rec.time < t) || o.until.is_some_and(|t| rec.time > t) {
        return false;
    }
    if !o.ops.is_empty() && !o.ops.iter().any(|n| n == rec.op.name()) {
        return false;
    }
    match &o.path {
        None => true,
        Some(prefix) => paths(&rec.op).iter().any(|p| p.starts_with(prefix)),
    }
}

/// The paths an operation touches: its target, and a rename or link source.
fn paths(op: &Op) -> Vec<&RelPath> {
    match op {
        Op::Link { src, dst } | Op::Rename { src, dst, .. } => vec![src, dst],
        _ => vec![op.target()],
    }
}

/// Bytes of data an operation carries or asks for (write size, truncate
/// size, fallocate length, xattr value size).
fn size(op: &Op) -> Option<u64> {
    match op {
        Op::Write { data, .. } => Some(data.len() as u64),
        Op::Truncate { size, .. } => Some(*size),
        Op::SetAttr { attrs, .. } => attrs.size,
        Op::Fallocate { length, .. } => Some(*length),
        Op::SetXattr { value, .. } => Some(value.len() as u64),
        _ => None,
    }
}

fn text_line(m: &Message, r: &Record) -> String {
    let mut s = format!(
        "{}:{} seq={} pseq={} writer={} epoch={} {} {}",
        m.partition,
        m.offset,
        r.seq,
        r.partition_seq,
        hex(&r.writer.id).get(..8).unwrap_or_default(),
        r.writer.epoch,
        r.time.rfc3339(),
        r.op.name(),
    );
    match &r.op {
        Op::Link { src, dst } | Op::Rename { src, dst, .. } => {
            s.push_str(&format!(" {} -> {}", src.display(), dst.display()))
        }
        op => s.push_str(&format!(" /{}", op.target().display())),
    }
    if let Some(n) = size(&r.op) {
        s.push_str(&format!(" size={n}"));
    }
    if let Op::Write { offset, .. } = &r.op {
        s.push_str(&format!(" offset={offset}"));
    }
    s
}

fn json_line(m: &Message, r: &Record) -> String {
    let mut s = format!(
        "{{\"partition\":{},\"offset\":{},\"seq\":{},\"partition_seq\":{},\"writer\":\"{}\",\
         \"epoch\":{},\"time\":\"{}\",\"op\":\"{}\"",
        m.partition,
        m.offset,
        r.seq,
        r.partition_seq,
        hex(&r.writer.id),
        r.writer.epoch,
        r.time.rfc3339(),
        r.op.name(),
    );
    match &r.op {
        Op::Link { src, dst } | Op::Rename { src, dst, .. } => s.push_str(&format!(
            ",\"path\":{},\"source\":{}",
            json_str(dst.as_bytes()),
            json_str(src.as_bytes())
        )),
        op => s.push_str(&format!(",\"path\":{}", json_str(op.target().as_bytes()))),
    }
    if let Some(n) = size(&r.op) {
        s.push_str(&format!(",\"size\":{n}"));
    }
    if let Op::Write { offset, .. } = &r.op {
        s.push_str(&format!(",\"write_offset\":{offset}"));
    }
    s.push('}');
    s
}

/// A JSON string of (possibly non-UTF-8) bytes: invalid bytes become U+FFFD.
fn json_str(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for c in String::from_utf8_lossy(b).chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => s.push_str(&format!("\\u{:04x}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str(b"a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_str(b"\xff"), "\"\u{fffd}\"");
    }

    #[test]
    fn filters() {
        let rec = |op: Op, sec: i64| Record {
            writer: crate::record::Writer {
                id: vec![1; 16],
                epoch: 1,
            },
            seq: 1,
            partition_seq: 1,
            partition: 0,
            deps: Vec::new(),
            time: Timestamp::new(sec, 0),
            caller: Default::default(),
            op,
        };
        let p = |s: &str| RelPath::new(s).unwrap();
        let rename = rec(
            Op::Rename {
                src: p("a/x"),
                dst: p("b/y"),
                flags: Default::default(),
            },
            100,
        );
        let mut o = LogOptions {
            path: Some(p("a")),
            ..LogOptions::default()
        };
        assert!(passes(&rename, &o), "the source is under the prefix");
        o.path = Some(p("c"));
        assert!(!passes(&rename, &o));
        o.path = None;
        o.ops = vec!["write".into()];
        assert!(!passes(&rename, &o));
        o.ops = vec!["rename".into()];
        o.since = Some(Timestamp::new(101, 0));
        assert!(!passes(&rename, &o));
        o.since = Some(Timestamp::new(100, 0));
        o.until = Some(Timestamp::new(100, 0));
        assert!(passes(&rename, &o));
    }
}
