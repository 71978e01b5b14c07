//! Host limits a large emulation runs into, raised for the run and put back when the last
//! emulation that needed them goes.
//!
//! - The neighbour (ARP) table is one table for every network namespace, capped by
//!   `net.ipv4.neigh.default.gc_thresh3` (1,024 by default): thousands of hosts each holding
//!   an entry for their gateway overflow it ("neighbour table overflow") and their pings fail.
//!   These sysctls exist only in the host's namespace.
//! - Each TAP is a descriptor of the emulator: `RLIMIT_NOFILE`'s soft limit (often 1,024) is
//!   raised towards the hard limit for this process (nothing to put back).
//!
//! Values changed are recorded in `/run/linerate/sysctl.json` with the emulations holding
//! them, so `down` (also of a killed run) restores exactly what was there before.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const THRESH: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Emulations that need the raised values.
    holders: Vec<String>,
    /// Sysctl path → the value before the first of them raised it.
    before: BTreeMap<String, String>,
}

fn saved_path() -> PathBuf {
    Path::new(crate::netns::RUN_DIR).join("sysctl.json")
}

fn load() -> Saved {
    fs::read_to_string(saved_path())
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn store(s: &Saved) -> io::Result<()> {
    fs::create_dir_all(crate::netns::RUN_DIR)?;
    let p = saved_path();
    let tmp = p.with_extension("tmp");
    fs::write(
        &tmp,
        serde_json::to_string_pretty(s).map_err(io::Error::other)?,
    )?;
    fs::rename(tmp, p)
}

fn read_u64(path: &str) -> io::Result<u64> {
    fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))
}

/// What emulation `emu` with `host_ifaces` host interfaces needs: raises what is short and
/// returns a line per change.
pub fn raise(emu: &str, host_ifaces: usize) -> io::Result<Vec<String>> {
    let mut changed = Vec::new();
    // A descriptor per TAP, plus the emulator's own (rings, sockets, the controller's).
    let want_fds = (host_ifaces as u64) * 2 + 4096;
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    if soft < want_fds {
        let new = want_fds.min(hard);
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, new, hard)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        changed.push(format!("open files {soft} -> {new} (this process)"));
        if new < want_fds {
            changed.push(format!(
                "open files: the hard limit {hard} is below the {want_fds} this emulation may need"
            ));
        }
    }
    // An entry per host interface for its gateway, more on shared segments; the soft and
    // hard caps well above that, and never lowered.
    let n = host_ifaces as u64;
    let want = [n + 128, 2 * n + 512, 4 * n + 1024];
    let mut s = load();
    for (path, want) in THRESH.iter().zip(want) {
        // The thresholds are the host's (init namespace's): an emulator started inside
        // another network namespace (a second "host" on one machine) does not see them.
        let now = match read_u64(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => r?,
        };
        if now >= want {
            continue;
        }
        s.before
            .entry(path.to_string())
            .or_insert_with(|| now.to_string());
        fs::write(path, want.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        changed.push(format!(
            "{} {now} -> {want}",
            path.trim_start_matches("/proc/sys/").replace('/', ".")
        ));
    }
    if !s.before.is_empty() && !s.holders.iter().any(|h| h == emu) {
        s.holders.push(emu.to_string());
    }
    if !s.before.is_empty() {
        store(&s)?;
    }
    Ok(changed)
}

/// Emulation `emu` no longer needs the raised values: when no other emulation does, they go
/// back to what they were.
pub fn restore(emu: &str) -> io::Result<()> {
    let mut s = load();
    s.holders.retain(|h| h != emu);
    if !s.holders.is_empty() {
        return store(&s);
    }
    for (path, value) in &s.before {
        fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    }
    match fs::remove_file(saved_path()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
