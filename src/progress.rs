//! Progress of long one-off jobs (an import, a snapshot restore): a bar
//! redrawn in place when stderr is a terminal, else a log line every few
//! seconds — entries and bytes done of the total, percent, rate and time
//! left. Log lines written while a bar is shown clear it first
//! ([`LogWriter`]), so the two never share a line.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Is a bar drawn on the current stderr line (no newline after it yet)?
static BAR_SHOWN: AtomicBool = AtomicBool::new(false);

/// How often a bar is redrawn, and a log line written.
const BAR_EVERY: Duration = Duration::from_millis(200);
const LINE_EVERY: Duration = Duration::from_secs(3);

/// Counts work done against a known total; shared by the threads doing it.
pub struct Progress {
    what: &'static str,
    /// What the entries are ("entries", "records").
    unit: &'static str,
    total_entries: AtomicU64,
    total_bytes: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
    last: Mutex<Instant>,
    bar: bool,
}

impl Progress {
    /// `what` names the job in every line ("import", "restore").
    pub fn new(what: &'static str, total_entries: u64, total_bytes: u64) -> Self {
        Progress {
            what,
            unit: "entries",
            total_entries: AtomicU64::new(total_entries),
            total_bytes: AtomicU64::new(total_bytes),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: Instant::now(),
            last: Mutex::new(Instant::now()),
            bar: std::io::stderr().is_terminal(),
        }
    }

    /// Names what is counted (default "entries").
    pub fn counting(mut self, unit: &'static str) -> Self {
        self.unit = unit;
        self
    }

    /// For work whose total grows while it is done.
    pub fn set_total(&self, entries: u64, bytes: u64) {
        self.total_entries.store(entries, Ordering::Relaxed);
        self.total_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Counts `n` more entries done.
    pub fn add_entries(&self, n: u64) {
        self.entries.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` more bytes done.
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// For a job that counts what it did itself.
    pub fn set(&self, entries: u64, bytes: u64) {
        self.entries.store(entries, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
    }

    /// Entries and bytes done so far.
    pub fn done(&self) -> (u64, u64) {
        (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Shows the progress if it is due (cheap otherwise).
    pub fn tick(&self) {
        let every = if self.bar { BAR_EVERY } else { LINE_EVERY };
        {
            // A panic elsewhere cannot leave an instant half-written.
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < every {
                return;
            }
            *last = Instant::now();
        }
        self.show();
    }

    /// Shows the final state and ends the bar's line.
    pub fn finish(&self) {
        if self.bar {
            self.show();
            if BAR_SHOWN.swap(false, Ordering::Relaxed) {
                let _ = std::io::stderr().write_all(b"\n");
            }
        }
    }

    /// Removes a bar (the job ended some other way; its log says how).
    pub fn clear(&self) {
        if BAR_SHOWN.swap(false, Ordering::Relaxed) {
            let _ = std::io::stderr().write_all(b"\r\x1b[K");
        }
    }

    fn show(&self) {
        let text = self.text();
        if self.bar {
            let line = format!("\r\x1b[K{} {} {text}", self.what, bar(self.fraction()));
            let mut err = std::io::stderr().lock();
            if err.write_all(line.as_bytes()).is_ok() {
                BAR_SHOWN.store(true, Ordering::Relaxed);
            }
            let _ = err.flush();
        } else {
            tracing::info!("{}: {text}", self.what);
        }
    }

    /// Done so far: the lesser of the entries' and the bytes' share (work
    /// order puts either ahead — a big file first, or many empty ones —
    /// and what lags is what is left to wait for).
    fn fraction(&self) -> f64 {
        let (entries, bytes) = self.done();
        let (total_entries, total_bytes) = self.totals();
        let share = |done: u64, total: u64| (total > 0).then(|| done as f64 / total as f64);
        let f = match (share(entries, total_entries), share(bytes, total_bytes)) {
            (Some(e), Some(b)) => e.min(b),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => 1.0,
        };
        f.clamp(0.0, 1.0)
    }

    fn totals(&self) -> (u64, u64) {
        (
            self.total_entries.load(Ordering::Relaxed),
            self.total_bytes.load(Ordering::Relaxed),
        )
    }

    /// `12 of 40 entries, 1.0 of 4.0 MiB (25%), 6 entries/s, 0.5 MiB/s, about 6 s left`
    /// (without bytes to count, the MiB parts are left out).
    pub fn text(&self) -> String {
        let (entries, bytes) = self.done();
        let (total_entries, total_bytes) = self.totals();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let done = self.fraction();
        let left = secs * (1.0 - done) / done.max(1e-9);
        let unit = self.unit;
        let (size, size_rate) = if total_bytes > 0 {
            (
                format!(", {:.1} of {:.1} MiB", mib(bytes), mib(total_bytes)),
                format!(", {:.1} MiB/s", mib(bytes) / secs),
            )
        } else {
            (String::new(), String::new())
        };
        format!(
            "{entries} of {total_entries} {unit}{size} ({:.0}%), {:.0} {unit}/s{size_rate}, {}",
            100.0 * done,
            entries as f64 / secs,
            if done > 0.0 {
                format!("about {left:.0} s left")
            } else {
                "time left unknown".to_string()
            }
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// `[#########...........]`
fn bar(fraction: f64) -> String {
    const WIDTH: usize = 24;
    let full = ((fraction * WIDTH as f64) as usize).min(WIDTH);
    format!("[{}{}]", "#".repeat(full), ".".repeat(WIDTH - full))
}

/// The log's writer: stderr, clearing a progress bar drawn on the current
/// line first (the bar is redrawn below at its next tick).
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if BAR_SHOWN.swap(false, Ordering::Relaxed) {
            err.write_all(b"\r\x1b[K")?;
        }
        err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_counts_what_lags_behind() {
        let p = Progress::new("import", 10, 4 << 20);
        p.add_entries(5);
        p.add_bytes(1 << 20);
        let t = p.text();
        assert!(
            t.starts_with("5 of 10 entries, 1.0 of 4.0 MiB (25%)"),
            "{t}"
        );
        assert!(t.contains("s left"), "{t}");
        p.add_bytes(3 << 20);
        assert!(p.text().contains("(50%)"), "{}", p.text());
    }

    #[test]
    fn text_counts_by_entries_without_bytes() {
        let p = Progress::new("import", 4, 0);
        assert!(p.text().contains("time left unknown"), "{}", p.text());
        p.add_entries(3);
        assert!(p.text().starts_with("3 of 4 entries (75%)"), "{}", p.text());
        let p = Progress::new("catch-up", 0, 0).counting("records");
        p.set_total(200, 0);
        p.set(50, 0);
        assert!(
            p.text().starts_with("50 of 200 records (25%)"),
            "{}",
            p.text()
        );
    }

    #[test]
    fn bar_is_proportional_and_bounded() {
        assert_eq!(bar(0.0), format!("[{}]", ".".repeat(24)));
        assert_eq!(bar(0.5), format!("[{}{}]", "#".repeat(12), ".".repeat(12)));
        assert_eq!(bar(2.0), format!("[{}]", "#".repeat(24)));
    }
}
