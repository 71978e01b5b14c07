//! The units people write settings in, parsed into values: durations (`500ms`), rates with SI
//! suffixes (`2.5M`), MAC addresses; and the two facts of a network interface every job looks
//! up by name (its index and MAC address). Errors are one sentence naming what was given.

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
pub const RATE_RANGE: (f64, f64) = crate::sched::TokenBucket::RATE_RANGE;

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

/// The interface index of `dev`, given by option `flag`, or a sentence naming both.
pub fn ifindex(flag: &str, dev: &str) -> Result<u32, String> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("{flag} {dev}: no such network interface"))
}

/// The MAC address of `dev`, given by option `flag`.
pub fn mac_of(flag: &str, dev: &str) -> Result<[u8; 6], String> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{dev}/address"))
        .map_err(|_| format!("{flag} {dev}: no such network interface"))?;
    parse_mac(s.trim()).map_err(|e| format!("{dev}: {e}"))
}

/// `--cores 2,3`: one core per thread, each a core of this machine; empty means 0..n.
pub fn cores_for(list: &[usize], n: usize, flag: &str) -> Result<Vec<usize>, String> {
    let have = std::thread::available_parallelism().map_or(1, |c| c.get());
    if list.is_empty() {
        return Ok((0..n).collect());
    }
    if list.len() != n {
        return Err(format!(
            "{flag}: {} core(s) given for {n} thread(s); give one per thread",
            list.len()
        ));
    }
    if let Some(c) = list.iter().find(|&&c| c >= have) {
        return Err(format!(
            "{flag}: core {c} is not a core of this machine (it has {have})"
        ));
    }
    Ok(list.to_vec())
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
