//! Test support: the privileged-test gate and RAII guards for network namespaces and veth
//! pairs.
//!
//! Privileged tests call [`privileged`] first. As root it records the test's name in the file
//! named by `LINERATE_PRIVILEGED_LOG` (so the README's test command can prove that they ran)
//! and returns true. Without root it prints one line saying the test was skipped — or, when
//! `LINERATE_REQUIRE_PRIVILEGED=1` (CI), fails the test, because a run that should have
//! exercised the kernel paths must not pass without them.
//!
//! Guards create objects with names unique to this process and remove them in `Drop`, so a
//! failing (panicking) test cleans up too.

use anyhow::{Context, Result, bail};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// True when this process is root. Uses `id -u` to stay free of `unsafe`.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Gate for a privileged test named `test`; see the module docs.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        record_ran(test);
        return true;
    }
    if std::env::var("LINERATE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("privileged test {test} must run here but this process is not root");
    }
    eprintln!("skipped (needs root): {test}");
    false
}

/// Gate for a test that needs the PostgreSQL server named by `LINERATE_TEST_DATABASE_URL`
/// (`scripts/deps.sh`'s `need_postgres` sets one up): returns its URL. These count as
/// privileged tests: setting the server up takes root, and `scripts/run-tests` checks through
/// `LINERATE_PRIVILEGED_LOG` that they ran. Without a URL a test prints one line and passes,
/// unless `LINERATE_REQUIRE_PRIVILEGED=1` says it must run.
pub fn privileged_db(test: &str) -> Option<String> {
    let url = match std::env::var("LINERATE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if std::env::var("LINERATE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
                panic!(
                    "database test {test} must run here but LINERATE_TEST_DATABASE_URL is unset \
                     (run `. scripts/deps.sh; need_postgres` first)"
                );
            }
            eprintln!("skipped (needs LINERATE_TEST_DATABASE_URL): {test}");
            return None;
        }
    };
    record_ran(test);
    Some(url)
}

/// Appends `test` to `LINERATE_PRIVILEGED_LOG`, if set: `scripts/run-tests` compares that log
/// with the gated tests it finds in the source (every gate records through here).
pub fn record_ran(test: &str) {
    use std::io::Write;
    if let Ok(path) = std::env::var("LINERATE_PRIVILEGED_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open LINERATE_PRIVILEGED_LOG {path}: {e}"));
        // One write per line: O_APPEND keeps concurrent tests' lines whole.
        f.write_all(format!("{test}\n").as_bytes())
            .expect("write privileged log");
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most 15 bytes (the interface name limit).
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{n:x}", std::process::id() & 0xfffff);
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("spawning {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The interface index of `name` (in this process's namespace).
pub fn ifindex(name: &str) -> u32 {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .unwrap_or_else(|e| panic!("interface {name}: {e}"))
        .trim()
        .parse()
        .expect("ifindex is a number")
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new() -> Result<NetNs> {
        let name = unique_name("lrns");
        run("ip", &["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A veth pair, deleted on drop (from wherever its ends are, if they still exist).
pub struct VethPair {
    pub a: String,
    pub b: String,
}

impl VethPair {
    pub fn new() -> Result<VethPair> {
        VethPair::with_queues(1)
    }

    /// A pair whose ends both have `queues` RX and TX queues.
    pub fn with_queues(queues: u32) -> Result<VethPair> {
        let a = unique_name("lrva");
        let b = unique_name("lrvb");
        let q = queues.to_string();
        let per_end = ["numtxqueues", &q, "numrxqueues", &q];
        let mut args = vec!["link", "add", &a];
        args.extend_from_slice(&per_end);
        args.extend_from_slice(&["type", "veth", "peer", "name", &b]);
        args.extend_from_slice(&per_end);
        run("ip", &args)?;
        Ok(VethPair { a, b })
    }

    /// Brings both ends up with IPv6 off, so that their kernel sends nothing of its own
    /// (no multicast listener reports, router solicitations or address probes): what crosses
    /// the pair is only what a test puts on it.
    pub fn quiet_up(&self) -> Result<()> {
        for end in [&self.a, &self.b] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{end}/disable_ipv6"), "1")
                .with_context(|| format!("disabling IPv6 on {end}"))?;
            run("ip", &["link", "set", end, "up"])?;
        }
        Ok(())
    }

    /// Moves one end into a namespace, gives it an address and brings it up.
    pub fn place(&self, end: &str, ns: &NetNs, cidr: &str) -> Result<()> {
        run("ip", &["link", "set", end, "netns", ns.name()])?;
        ns.exec("ip", &["addr", "add", cidr, "dev", end])?;
        ns.exec("ip", &["link", "set", end, "up"])?;
        Ok(())
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Fails harmlessly if the pair went away with a namespace.
        let _ = run("ip", &["link", "del", &self.a]);
    }
}
