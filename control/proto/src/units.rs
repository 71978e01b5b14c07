//! The units people write settings in, parsed into values: durations (`500ms`), rates with SI
//! suffixes (`2.5M`), MAC addresses. Shared by every job's flags and files and by the
//! controller's seed file. Errors are one sentence naming what was given; nothing panics.

use std::time::Duration;

/// A file parser's error as one sentence naming the line and its text: `line 3 `rate =
/// "fast"`: MESSAGE`. `at` is the byte offset the parser blamed (clamped into `text`, moved
/// back to a character boundary), if it gave one.
pub fn at_line(text: &str, at: Option<usize>, message: &str) -> String {
    let at = at.unwrap_or(0).min(text.len());
    let at = (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let line_no = text[..at].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    format!("line {line_no} `{line}`: {message}")
}

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

/// What [`parse_rate`] accepts: 1 to 10T (bit/s for links and shapers, the dataplane's token
/// buckets' range and [`crate::MAX_RATE_BPS`]; packets per second for a generator, where 10T
/// is also far past reach).
pub const RATE_RANGE: (f64, f64) = (1.0, crate::MAX_RATE_BPS as f64);

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
