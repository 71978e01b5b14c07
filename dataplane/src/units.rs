//! What every job looks up about its host: an interface's index and MAC address by name, and
//! the cores its threads go to. The units settings are written in are `linerate_proto::units`,
//! re-exported here.

pub use linerate_proto::units::{RATE_RANGE, parse_duration, parse_mac, parse_rate};

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
