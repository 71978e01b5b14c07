//! The `linerate` subcommands. Each module is one job: its arguments and how it runs.

pub mod controller;
pub mod fwd;
pub mod generate;
pub mod pipeline;
pub mod relay;
pub mod selftest;
pub mod sink;

use anyhow::{Context, Result};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// `5s`, `500ms`, `1m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 5s, 500ms or 1m"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use ms, s or m)")),
    };
    if !secs.is_finite() || !(1e-3..=86_400.0).contains(&secs) {
        return Err(format!("'{s}' must be between 1ms and 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What [`parse_rate`] accepts: the range of `sched`'s token buckets, the strictest user of a
/// rate (bit/s there; packets per second for a generator, where 10T is also far past reach).
pub const RATE_RANGE: (f64, f64) = linerate_dataplane::sched::TokenBucket::RATE_RANGE;

/// A count per second with an optional SI suffix: `1500`, `100k`, `2.5M`, `10G`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        Some((i, 'g' | 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a rate like 1500, 100k, 2.5M or 10G"))?;
    let v = v * mult;
    let (lo, hi) = RATE_RANGE;
    if !v.is_finite() || !(lo..=hi).contains(&v) {
        return Err(format!("rate '{s}' must be between 1 and 10T"));
    }
    Ok(v)
}

/// `02:00:5e:10:00:01`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("'{s}' is not a MAC address like 02:00:5e:10:00:01");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// `--xdp-mode`: how to attach linerate's XDP program.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeArg {
    /// Driver (native) mode, falling back to skb (generic) mode with a message.
    Auto,
    Driver,
    Skb,
}

impl From<XdpModeArg> for linerate_ebpf::AttachMode {
    fn from(m: XdpModeArg) -> Self {
        match m {
            XdpModeArg::Auto => linerate_ebpf::AttachMode::Auto,
            XdpModeArg::Driver => linerate_ebpf::AttachMode::Driver,
            XdpModeArg::Skb => linerate_ebpf::AttachMode::Skb,
        }
    }
}

/// `--cores 2,3`: one core per thread, each a core of this machine; empty means 0..n.
pub fn cores_for(list: &[usize], n: usize, flag: &str) -> Result<Vec<usize>> {
    let have = std::thread::available_parallelism().map_or(1, |c| c.get());
    if list.is_empty() {
        return Ok((0..n).collect());
    }
    if list.len() != n {
        anyhow::bail!(
            "{flag}: {} core(s) given for {n} thread(s); give one per thread",
            list.len()
        );
    }
    if let Some(c) = list.iter().find(|&&c| c >= have) {
        anyhow::bail!("{flag}: core {c} is not a core of this machine (it has {have})");
    }
    Ok(list.to_vec())
}

/// A flag set by SIGINT, SIGTERM or SIGHUP, so every job stops cleanly and still reports. A
/// second SIGINT exits at once.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    stop_flag_on(&[SIGINT, SIGTERM, SIGHUP])
}

/// [`stop_flag`] for the given signals only (`fwd --config` keeps SIGHUP for reloads).
pub fn stop_flag_on(signals: &[i32]) -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for &sig in signals {
        if sig == signal_hook::consts::SIGINT {
            // Registered first: runs only when the flag is already set.
            signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone())
                .context("installing the SIGINT handler")?;
        }
        signal_hook::flag::register(sig, stop.clone())
            .with_context(|| format!("installing the handler of signal {sig}"))?;
    }
    Ok(stop)
}

/// The once-a-second progress line: rewritten in place on a terminal, one line each
/// otherwise (logs, CI).
pub struct Live {
    tty: bool,
}

impl Live {
    pub fn new() -> Live {
        Live {
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn line(&self, t: Duration, text: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K[{:>4.0}s] {text}", t.as_secs_f64())
        } else {
            writeln!(err, "[{:>4.0}s] {text}", t.as_secs_f64())
        };
        let _ = err.flush();
    }

    pub fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// The interface index of `dev`, given by option `flag`, or a clear error naming both.
pub fn ifindex(flag: &str, dev: &str) -> Result<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .with_context(|| format!("{flag} {dev}: no such network interface"))
}

/// The MAC address of `dev`, given by option `flag`.
pub fn mac_of(flag: &str, dev: &str) -> Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{dev}/address"))
        .with_context(|| format!("{flag} {dev}: no such network interface"))?;
    parse_mac(s.trim()).map_err(|e| anyhow::anyhow!("{dev}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_durations_macs() {
        assert_eq!(parse_rate("2.5M"), Ok(2.5e6));
        assert_eq!(parse_rate("100k"), Ok(1e5));
        assert_eq!(parse_rate("10G"), Ok(1e10));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-1").is_err());
        for bad in ["1e300G", "1e-300", "0.5", "inf", "NaN", "20T", "1e13k"] {
            let e = parse_rate(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert_eq!(parse_rate("10000G"), Ok(1e13));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5h").is_err());
        assert_eq!(parse_mac("02:00:5e:10:00:01"), Ok([2, 0, 0x5e, 0x10, 0, 1]));
        assert!(parse_mac("02:00:5e:10:00").is_err());
        assert!(parse_mac("02:00:5e:10:00:zz").is_err());
    }
}
