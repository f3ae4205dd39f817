//! Lock-free latency histogram (log-linear buckets, about 6% resolution)
//! for replication lag and journal latency, rendered for Prometheus as a
//! histogram (`_bucket{le}`, `_sum`, `_count`), with quantiles over all
//! samples or over an interval (the difference of two [`Counts`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two.
const SUB: u64 = 16;
/// Powers of two covered (microseconds up to ~2^40 us, about 12 days).
const POWERS: u64 = 40;

/// The `le` bounds exported to Prometheus, in seconds.
const LE_SECONDS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 3600.0,
];

/// A latency histogram (lock-free, fixed buckets).
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    /// Samples per `LE_SECONDS` bound (not cumulative), then above all.
    le: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let power = 63 - us.leading_zeros() as u64; // >= 4
    let shift = power - 4;
    let sub = (us >> shift) - SUB; // 0..SUB
    (((power - 3) * SUB) + sub).min(POWERS * SUB - 1) as usize
}

fn lower_bound(bucket: usize) -> u64 {
    let b = bucket as u64;
    if b < SUB {
        return b;
    }
    let power = b / SUB + 3;
    let sub = b % SUB;
    (SUB + sub) << (power - 4)
}

fn le_of(us: u64) -> usize {
    let secs = us as f64 / 1e6;
    LE_SECONDS
        .iter()
        .position(|&le| secs <= le)
        .unwrap_or(LE_SECONDS.len())
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            buckets: (0..POWERS * SUB).map(|_| AtomicU64::new(0)).collect(),
            le: (0..=LE_SECONDS.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    /// Adds a sample.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.le[le_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Samples so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The value below which a fraction `q` (0..=1) of the samples lie
    /// (lower bound of its bucket), or `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        self.counts().quantile(q)
    }

    /// The largest sample (rounded up to its bucket).
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Ordering::Relaxed))
    }

    /// The samples so far, to compute quantiles over an interval later.
    pub fn counts(&self) -> Counts {
        Counts {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Prometheus text: `# HELP`, `# TYPE histogram`, cumulative
    /// `_bucket{le}` lines, `_sum` (seconds) and `_count`. `labels` is
    /// empty or `key="value",...` (without braces).
    pub fn render(&self, name: &str, help: &str, labels: &str) -> String {
        let mut s = format!(
            "# HELP {name} {help}
# TYPE {name} histogram
"
        );
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, le) in LE_SECONDS.iter().enumerate() {
            cumulative += self.le[i].load(Ordering::Relaxed);
            s += &format!("{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}\n");
        }
        cumulative += self.le[LE_SECONDS.len()].load(Ordering::Relaxed);
        s += &format!("{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}\n");
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        s += &format!(
            "{name}_sum{} {}\n",
            braces(labels),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        s += &format!("{name}_count{} {cumulative}\n", braces(labels));
        s
    }
}

/// Bucket counts of a histogram at one moment.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    buckets: Vec<u64>,
}

impl Counts {
    /// The samples recorded after `earlier` (taken of the same histogram).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// As [`Histogram::quantile`], over these samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b;
            if seen >= rank {
                return Some(Duration::from_micros(lower_bound(i)));
            }
        }
        None
    }
}

/// Serves `render()` as Prometheus text on `GET /metrics` (anything else:
/// 404) from a background thread. Returns the bound address.
pub fn serve(
    addr: std::net::SocketAddr,
    render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<std::net::SocketAddr> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("kafkafs-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = String::new();
                let ok = BufReader::new(&conn).read_line(&mut request).is_ok();
                let (status, body) = if ok && request.starts_with("GET /metrics") {
                    ("200 OK", render())
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_string())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_resolution() {
        let h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.07, "p50 {p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.07, "p99 {p99}");
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), Duration::from_micros(10_000));
        for us in [0u64, 1, 15, 16, 17, 1000, 123_456_789] {
            let b = bucket_of(us);
            assert!(lower_bound(b) <= us, "{us}");
            assert!(us < lower_bound(b + 1), "{us}");
        }
    }

    #[test]
    fn interval_quantiles_forget_older_samples() {
        let h = Histogram::new();
        for _ in 0..1000 {
            h.record(Duration::from_secs(30));
        }
        let before = h.counts();
        for _ in 0..10 {
            h.record(Duration::from_millis(2));
        }
        let recent = h.counts().since(&before);
        assert_eq!(recent.count(), 10);
        let p99 = recent.quantile(0.99).unwrap();
        assert!(p99 < Duration::from_millis(3), "{p99:?}");
        assert!(h.quantile(0.5).unwrap() > Duration::from_secs(25));
        assert_eq!(Counts::default().quantile(0.5), None);
    }

    #[test]
    fn renders_a_prometheus_histogram() {
        let h = Histogram::new();
        h.record(Duration::from_micros(300));
        h.record(Duration::from_millis(7));
        h.record(Duration::from_secs(7200));
        let text = h.render("kafkafs_x_seconds", "X.", "topic=\"t\"");
        assert!(
            text.contains("# TYPE kafkafs_x_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("kafkafs_x_seconds_bucket{topic=\"t\",le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kafkafs_x_seconds_bucket{topic=\"t\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kafkafs_x_seconds_bucket{topic=\"t\",le=\"0.01\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kafkafs_x_seconds_bucket{topic=\"t\",le=\"3600\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kafkafs_x_seconds_bucket{topic=\"t\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("kafkafs_x_seconds_sum{topic=\"t\"} 7200.0073\n"),
            "{text}"
        );
        assert!(
            text.contains("kafkafs_x_seconds_count{topic=\"t\"} 3\n"),
            "{text}"
        );
        let bare = h.render("kafkafs_y_seconds", "Y.", "");
        assert!(
            bare.contains("kafkafs_y_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{bare}"
        );
        assert!(bare.contains("kafkafs_y_seconds_count 3\n"), "{bare}");
    }
}
