//! `--metrics-listen ADDR`: the job's counters for Prometheus, in the OpenMetrics text format
//! (encoded by `prometheus-client`), over a small HTTP/1.1 server on its own thread.
//!
//! A job gives a function that reads its counters into [`Metrics`] when scraped; nothing is
//! kept between scrapes and nothing on a worker's path changes. Names follow Prometheus's
//! conventions: `linerate_<job>_<what>`, base units (bytes, seconds), counters written with
//! `_total` by the encoder, labels for the dimensions (port, class, worker, reason).

use anyhow::{Context, Result};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Label name and value.
pub type Labels = Vec<(&'static str, String)>;

/// A histogram series: labels, cumulative buckets (upper bound, count), sum and count.
type HistogramSeries = (Labels, Vec<(f64, u64)>, f64, u64);

enum Series {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, f64)>),
    Histogram(Vec<HistogramSeries>),
}

struct Family {
    name: &'static str,
    help: &'static str,
    series: Series,
}

/// One scrape's metrics, families in the order first added.
#[derive(Default)]
pub struct Metrics {
    families: Vec<Family>,
}

impl Metrics {
    fn family(&mut self, name: &'static str, help: &'static str, empty: Series) -> &mut Series {
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name,
                    help,
                    series: empty,
                });
                self.families.len() - 1
            }
        };
        &mut self.families[i].series
    }

    /// A counter (`name` without `_total`: the encoder adds it).
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, v: u64) {
        match self.family(name, help, Series::Counter(Vec::new())) {
            Series::Counter(s) => s.push((labels, v)),
            Series::Gauge(_) | Series::Histogram(_) => {
                unreachable!("{name}: one name, one type")
            }
        }
    }

    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, v: f64) {
        match self.family(name, help, Series::Gauge(Vec::new())) {
            Series::Gauge(s) => s.push((labels, v)),
            Series::Counter(_) | Series::Histogram(_) => {
                unreachable!("{name}: one name, one type")
            }
        }
    }

    /// A histogram from cumulative bucket counts (upper bounds in increasing order; the
    /// encoder adds `+Inf` with `count`).
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    ) {
        match self.family(name, help, Series::Histogram(Vec::new())) {
            Series::Histogram(s) => s.push((labels, buckets, sum, count)),
            Series::Counter(_) | Series::Gauge(_) => unreachable!("{name}: one name, one type"),
        }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Once(std::sync::Mutex::new(Some(self)))));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The registry's view of one scrape's [`Metrics`].
struct Once(std::sync::Mutex<Option<Metrics>>);

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Collector for Once {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(m) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        for f in &m.families {
            let kind = match f.series {
                Series::Counter(_) => MetricType::Counter,
                Series::Gauge(_) => MetricType::Gauge,
                Series::Histogram(_) => MetricType::Histogram,
            };
            let mut e = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            // A series without labels is written without braces.
            match &f.series {
                Series::Counter(s) => match s.as_slice() {
                    [(l, v)] if l.is_empty() => ConstCounter::new(*v).encode(e)?,
                    s => {
                        for (labels, v) in s {
                            ConstCounter::new(*v).encode(e.encode_family(labels)?)?;
                        }
                    }
                },
                Series::Gauge(s) => match s.as_slice() {
                    [(l, v)] if l.is_empty() => ConstGauge::new(*v).encode(e)?,
                    s => {
                        for (labels, v) in s {
                            ConstGauge::new(*v).encode(e.encode_family(labels)?)?;
                        }
                    }
                },
                Series::Histogram(s) => match s.as_slice() {
                    [(l, b, sum, count)] if l.is_empty() => e.encode_histogram::<NoLabelSet>(
                        *sum,
                        *count,
                        &per_bucket(b, *count),
                        None,
                    )?,
                    s => {
                        for (labels, b, sum, count) in s {
                            e.encode_family(labels)?.encode_histogram::<NoLabelSet>(
                                *sum,
                                *count,
                                &per_bucket(b, *count),
                                None,
                            )?;
                        }
                    }
                },
            }
        }
        Ok(())
    }
}

/// Cumulative bucket counts as the encoder wants them: per bucket (it accumulates them
/// itself), ending with `+Inf` (which it writes for `f64::MAX`).
fn per_bucket(cumulative: &[(f64, u64)], count: u64) -> Vec<(f64, u64)> {
    let mut prev = 0;
    (cumulative.iter().copied().chain([(f64::MAX, count)]))
        .map(|(le, c)| {
            let n = c.saturating_sub(prev);
            prev = prev.max(c);
            (le, n)
        })
        .collect()
}

/// What a job's scrape reads.
pub type Source = Arc<dyn Fn() -> Metrics + Send + Sync>;

/// `--metrics-listen`: a port alone means loopback (`9100` is `127.0.0.1:9100`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("'{s}': expected ADDR:PORT (e.g. 127.0.0.1:9100) or a port"))
}

/// Connections served at once; more are closed at accept (a scraper opens one).
const MAX_CLIENTS: usize = 16;

/// Serves `GET /metrics` on `addr` from a thread of its own until the process exits; returns
/// the address bound (port 0: the kernel's). The address is logged for scripts and tests.
pub fn serve(addr: SocketAddr, source: Source) -> Result<SocketAddr> {
    let l = TcpListener::bind(addr).with_context(|| format!("--metrics-listen {addr}"))?;
    let bound = l
        .local_addr()
        .context("--metrics-listen: the bound address")?;
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (source, busy) = (source.clone(), busy.clone());
                let spawned = std::thread::Builder::new()
                    .name("metrics-client".into())
                    .spawn(move || {
                        if let Err(e) = answer(s, &source) {
                            tracing::debug!("metrics: {e}");
                        }
                        busy.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    tracing::warn!("metrics: cannot start a thread for a scrape");
                }
            }
        })
        .context("starting the metrics thread")?;
    tracing::info!(listen = %bound, "metrics on http://{bound}/metrics");
    Ok(bound)
}

/// One HTTP/1.1 exchange (then close): `GET /metrics` (or `/`), 404 elsewhere, 405 for other
/// methods, 400 for what does not parse.
fn answer(mut s: TcpStream, source: &Source) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 8192];
    let mut have = 0;
    let (status, body) = loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..have]) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                break match (req.method, path) {
                    (Some("GET" | "HEAD"), "/metrics" | "/") => ("200 OK", source().encode()),
                    (Some("GET" | "HEAD"), _) => ("404 Not Found", "try /metrics\n".into()),
                    _ => ("405 Method Not Allowed", "GET /metrics\n".into()),
                };
            }
            Ok(httparse::Status::Partial) if have < buf.len() => continue,
            _ => break ("400 Bad Request", "a GET request, please\n".into()),
        }
    };
    let kind = if status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_keep_their_type_and_labels() {
        let mut m = Metrics::default();
        m.counter(
            "linerate_x_frames",
            "Frames.",
            vec![("port", "a".into())],
            3,
        );
        m.counter(
            "linerate_x_frames",
            "Frames.",
            vec![("port", "b".into())],
            4,
        );
        m.gauge("linerate_x_active", "Active.", vec![], 2.0);
        m.histogram(
            "linerate_x_seconds",
            "Latency.",
            vec![],
            vec![(0.001, 1), (0.01, 3)],
            0.02,
            4,
        );
        let text = m.encode();
        for want in [
            "# TYPE linerate_x_frames counter",
            "linerate_x_frames_total{port=\"a\"} 3",
            "linerate_x_frames_total{port=\"b\"} 4",
            "linerate_x_active 2",
            "linerate_x_seconds_bucket{le=\"0.001\"} 1",
            "linerate_x_seconds_bucket{le=\"0.01\"} 3",
            "linerate_x_seconds_bucket{le=\"+Inf\"} 4",
            "linerate_x_seconds_count 4",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }

    #[test]
    fn a_bare_port_listens_on_loopback() {
        assert_eq!(parse_listen("9100").unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(parse_listen("[::1]:0").unwrap().to_string(), "[::1]:0");
        assert!(parse_listen("localhost").is_err());
    }
}
