//! Helpers the end-to-end tests of the `linerate` binary share: running it (also inside a
//! namespace), waiting until a background job is ready, reading its JSON reports.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

pub fn linerate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_linerate"))
}

/// `linerate ARGS`, which must succeed; its standard output.
pub fn linerate_ok(args: &[&str]) -> String {
    let out = linerate().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "linerate {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `linerate` run inside network namespace `ns`.
pub fn linerate_in(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_linerate")]);
    c
}

/// The first number after `"key":` in `json`.
pub fn field(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    json[at + key.len() + 3..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The part of `json` from `"key":` on, to read fields of a nested object with [`field`].
pub fn from<'a>(json: &'a str, key: &str) -> &'a str {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    &json[at..]
}

/// A child process that is killed (and reaped) if it is still running when dropped: a test
/// that fails half-way must not leave a relay or a forwarder running, spinning on a core that
/// later tests and benchmarks share.
pub struct Proc(Option<Child>);

impl Proc {
    /// The child, no longer killed on drop.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("a child")
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a child")
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A background `linerate` job: its stderr lines, but the ready line, arrive on `lines`.
pub struct Job {
    pub child: Proc,
    /// The line it was waited for (it may carry an address the job chose).
    pub ready: String,
    pub lines: Receiver<String>,
}

impl Job {
    /// Waits for a stderr line containing `text` (the job must print it within `limit`).
    pub fn wait_line(&self, text: &str, limit: Duration) -> String {
        let mut seen = Vec::new();
        loop {
            let line = self.lines.recv_timeout(limit).unwrap_or_else(|_| {
                panic!(
                    "no line with '{text}' from the job; it said:\n{}",
                    seen.join("\n")
                )
            });
            if line.contains(text) {
                return line;
            }
            seen.push(line);
        }
    }

    /// Asks the job to stop (SIGTERM) and [`finish`](Job::finish)es it.
    pub fn stop(self) -> String {
        let pid = self.child.id().to_string();
        linerate_tests::run("kill", &["-TERM", &pid]).unwrap();
        self.finish()
    }

    /// Waits for the job to exit successfully; returns its stdout.
    pub fn finish(self) -> String {
        let out = self.child.into_inner().wait_with_output().unwrap();
        // The process ended: its stderr reader ends too, so this collects every line.
        let rest: Vec<String> = self.lines.iter().collect();
        assert!(
            out.status.success(),
            "job failed ({}): {}",
            out.status,
            rest.join("\n")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Spawns `cmd` and returns once it printed a stderr line containing `ready`.
pub fn start_until(mut cmd: Command, ready: &str) -> Job {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut seen = String::new();
    let (tx, rx) = channel();
    while !line.contains(ready) {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "{cmd:?} exited before '{ready}': {seen}"
        );
        seen.push_str(&line);
        // What came before the ready line can be waited for too: a job may do things in
        // parallel with getting ready (fwd's control agent applies its routes while the
        // workers start).
        if !line.contains(ready) {
            let _ = tx.send(line.trim_end_matches('\n').to_string());
        }
    }
    std::thread::spawn(move || {
        for l in err.lines() {
            let Ok(l) = l else { break };
            let _ = tx.send(l);
        }
    });
    Job {
        child: Proc(Some(child)),
        ready: line,
        lines: rx,
    }
}

/// Starts `linerate sink` on `dev` for `secs` and returns once its sockets are bound.
pub fn start_sink(mut cmd: Command, dev: &str, secs: &str) -> Job {
    cmd.args(["sink", "--dev", dev, "--duration", secs, "--json"]);
    start_until(cmd, "analysing")
}

/// `linerate gen` out of `dev` to `dst`: `count` frames over 8 flows (unless `extra` gives
/// `--flows`) at 20k frames/s plus `extra` arguments; must succeed. Returns its JSON report.
pub fn gen_frames(mut cmd: Command, dev: &str, dst: &str, count: u64, extra: &[&str]) -> String {
    let count = count.to_string();
    let out = cmd
        .args(["gen", "--dev", dev, "--src", "192.0.2.1", "--dst", dst])
        .args(["--pps", "20k", "--count", &count, "--json"])
        .args(if extra.contains(&"--flows") {
            &[][..]
        } else {
            &["--flows", "8"][..]
        })
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `linerate ARGS` must fail with one clear line containing `needle`, and never panic.
pub fn assert_refused(args: &[&str], needle: &str) {
    let out = linerate().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

/// A TCP forwarder on a loopback port of its own (bound to port 0) that passes each
/// connection to the current target: a restarted server gets a new port from the kernel while
/// its clients keep one address, and no test ever rebinds a port it let go of.
pub struct Forwarder {
    pub addr: std::net::SocketAddr,
    target: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
}

impl Forwarder {
    pub fn new(target: std::net::SocketAddr) -> Forwarder {
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let target = std::sync::Arc::new(std::sync::Mutex::new(target));
        let t = target.clone();
        std::thread::spawn(move || {
            for down in l.incoming() {
                let Ok(down) = down else { continue };
                let to = *t.lock().unwrap();
                let Ok(up) = TcpStream::connect(to) else {
                    continue;
                };
                pump(down, up);
            }
        });
        Forwarder { addr, target }
    }

    pub fn set_target(&self, to: std::net::SocketAddr) {
        *self.target.lock().unwrap() = to;
    }
}

/// Copies bytes both ways between two connections, a thread each way, closing both when
/// either side ends.
pub fn pump(down: std::net::TcpStream, up: std::net::TcpStream) {
    for (mut from, mut into) in [
        (down.try_clone().unwrap(), up.try_clone().unwrap()),
        (up, down),
    ] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut into);
            let _ = into.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// Waits until `f` holds, failing the test after 30 s (a deadline, not a measurement).
pub fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "gave up waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The address in a "listening on ws://ADDR/" line.
pub fn ws_addr(line: &str) -> std::net::SocketAddr {
    let rest = line
        .split("ws://")
        .nth(1)
        .unwrap_or_else(|| panic!("no ws:// address in '{line}'"));
    rest.split('/').next().unwrap().parse().unwrap()
}

/// The address in a "metrics on http://ADDR/metrics" line.
pub fn metrics_addr(line: &str) -> std::net::SocketAddr {
    let rest = line
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no http:// address in '{line}'"));
    rest.split('/').next().unwrap().parse().unwrap()
}

/// `GET /metrics` from `addr`: the status line and the body.
pub fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// One sample of an exposition: name, labels, value.
pub type Sample = (String, std::collections::BTreeMap<String, String>, f64);

/// Parses an OpenMetrics exposition with the reference parser (Python's prometheus_client,
/// which checks names, types, label syntax, `_total` suffixes and the final `# EOF`);
/// panics with its complaint if it refuses the text.
pub fn openmetrics(text: &str) -> Vec<Sample> {
    use std::io::Write;
    let script = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = []\n\
        for f in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       out.append([s.name, s.labels, s.value])\n\
        print(json.dumps(out))\n";
    // Debian's interpreter: the one python3-prometheus-client installs into.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/run-tests installs it with python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Scrapes `addr` until `check` holds (a sink publishes once a second; counters are added
/// when a worker handles a completion), or fails after 30 s with the last exposition.
pub fn scrape_until(addr: std::net::SocketAddr, what: &str, check: impl Fn(&[Sample]) -> bool) {
    let t = std::time::Instant::now();
    loop {
        let (status, body) = scrape(addr);
        assert!(status.contains("200"), "{status}");
        if check(&openmetrics(&body)) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{what}:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sum of the samples named `name` whose labels include `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        !matching.is_empty(),
        "no sample {name} {labels:?} among {} samples",
        samples.len()
    );
    matching.iter().map(|(_, _, v)| v).sum()
}

/// A TCP echo server on a loopback port the kernel picks.
pub fn echo_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `psql` on `url` with `search_path` set to `schema`.
pub fn psql(url: &str, schema: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGOPTIONS", format!("-csearch_path={schema}"))
        .output()
        .expect("psql (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
