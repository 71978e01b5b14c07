//! `linerate show ROUTES|FLOWS|PORTS|STEERING`: asks a running `fwd` over its inspection
//! socket, and the socket's server side, run by `fwd`.
//!
//! The socket is a Unix stream socket (default `/run/linerate/fwd.sock`), mode 0600 in a
//! directory of mode 0700, and the server also checks its peer's credentials: only root (or
//! the user `fwd` runs as) may ask. One request per connection: a word (`counters`, `routes`,
//! `flows`) and a newline; the answer is one JSON object, then the connection closes.

use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use linerate_fwd::inspect::{Answer, Ask, What};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

/// Where `fwd` listens and `show` asks by default.
pub const DEFAULT_SOCKET: &str = "/run/linerate/fwd.sock";

/// The version of the answers' JSON (docs/JSON.md).
pub const SCHEMA: u64 = super::JSON_SCHEMA;

/// How long a question waits for the control loop (it answers within 20 ms when healthy).
const ANSWER_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Table {
    /// The routing table of the logic in use, with each route's next hops.
    Routes,
    /// Flows max mode cached in the XDP programs, with their packet and byte counts.
    Flows,
    /// Counters per worker (frames, bytes, handoffs, drops by cause), per port and class.
    Ports,
    /// The XDP programs' counters per port and action, and the flow cache's.
    Steering,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    #[arg(value_enum, ignore_case = true)]
    table: Table,
    /// The running fwd's inspection socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The answer as JSON (with a `schema` version).
    #[arg(long)]
    json: bool,
}

/// Asks the control loop `what` and waits for its answer.
pub fn ask(tx: &SyncSender<Ask>, what: What) -> Result<Answer> {
    let (reply, answer) = sync_channel(1);
    tx.try_send(Ask { what, reply })
        .map_err(|_| anyhow!("fwd is busy with other questions or stopping"))?;
    answer
        .recv_timeout(ANSWER_WAIT)
        .map_err(|_| anyhow!("fwd did not answer within {ANSWER_WAIT:?}"))
}

/// The answer as the socket sends it: a document `fwd.<word>` (docs/JSON.md).
fn answer_json(word: &str, a: &Answer) -> Value {
    let v = match serde_json::to_value(a) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(other) => serde_json::json!({ "items": other }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    super::document(&format!("fwd.{word}"), v)
}

/// The socket's file, removed when dropped (when fwd ends).
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the inspection socket (refusing one a live fwd holds; removing a stale one) and
/// serves it on a thread; the file goes when the returned guard is dropped.
pub fn serve(path: &Path, tx: SyncSender<Ask>) -> Result<SocketFile> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--socket: making {}", dir.display()))?;
        if dir.starts_with("/run/linerate") {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "--socket {}: another fwd is running there; give this one its own --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("--socket {}: removing a stale socket", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("--socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("--socket {}: chmod 0600", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    std::thread::Builder::new()
        .name("inspect".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                if let Err(e) = answer(s, &tx, me) {
                    tracing::warn!("inspection socket: {e:#}");
                }
            }
        })
        .context("starting the inspection thread")?;
    tracing::info!(socket = %path.display(), "fwd: inspection socket {}", path.display());
    Ok(SocketFile(path.to_path_buf()))
}

fn answer(mut s: UnixStream, tx: &SyncSender<Ask>, me: u32) -> Result<()> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(&s, PeerCredentials).context("reading the peer's credentials")?;
    if cred.uid() != 0 && cred.uid() != me {
        let _ = writeln!(s, "{{\"schema\":{SCHEMA},\"error\":\"not allowed\"}}");
        bail!("refused uid {} (pid {})", cred.uid(), cred.pid());
    }
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&s).take(64)).read_line(&mut line)?;
    let word = line.trim();
    let what = match word {
        "counters" => What::Counters,
        "routes" => What::Routes,
        "flows" => What::Flows,
        other => {
            let e = format!("unknown request {other:?}: counters, routes or flows");
            writeln!(s, "{}", serde_json::json!({"schema": SCHEMA, "error": e}))?;
            return Ok(());
        }
    };
    let v = match ask(tx, what) {
        Ok(a) => answer_json(word, &a),
        Err(e) => serde_json::json!({"schema": SCHEMA, "error": format!("{e:#}")}),
    };
    writeln!(s, "{v}")?;
    Ok(())
}

/// `linerate show`.
pub fn run(a: ShowArgs) -> Result<()> {
    let word = match a.table {
        Table::Routes => "routes",
        Table::Flows => "flows",
        Table::Ports | Table::Steering => "counters",
    };
    let mut s = UnixStream::connect(&a.socket).with_context(|| {
        format!(
            "--socket {}: no running fwd answers there (is it running, and are you root?)",
            a.socket.display()
        )
    })?;
    s.set_read_timeout(Some(ANSWER_WAIT + Duration::from_secs(1)))?;
    writeln!(s, "{word}")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .with_context(|| format!("reading the answer from {}", a.socket.display()))?;
    let v: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("the answer from {} is not JSON", a.socket.display()))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("fwd: {e}");
    }
    if a.json {
        println!("{v}");
        return Ok(());
    }
    print!("{}", table(a.table, &v));
    Ok(())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// A table for a person.
fn table(t: Table, v: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let list = |k: &str| v.get(k).and_then(Value::as_array).unwrap_or(&empty).clone();
    match t {
        Table::Routes => {
            out += &format!(
                "{} logic, version {}, {} route(s)\n",
                s(&v["logic"]),
                u(&v["logic_version"]),
                list("routes").len()
            );
            for r in list("routes") {
                let via: Vec<String> = (r["via"].as_array().unwrap_or(&empty).iter())
                    .map(|h| {
                        let w = u(&h["weight"]);
                        format!(
                            "{} -> {}{}",
                            s(&h["port"]),
                            s(&h["dst_mac"]),
                            if w > 1 {
                                format!(" weight {w}")
                            } else {
                                String::new()
                            }
                        )
                    })
                    .collect();
                out += &format!("{:<44} via {}\n", s(&r["prefix"]), via.join(", "));
            }
        }
        Table::Flows => {
            let flows = v.get("items").and_then(Value::as_array).unwrap_or(&empty);
            out += &format!("{} cached flow(s)\n", flows.len());
            for f in flows {
                out += &format!(
                    "{:<8} {:>5} {}:{} -> {}:{}  out {}  packets {}  bytes {}\n",
                    s(&f["in_port"]),
                    match u(&f["proto"]) {
                        6 => "tcp".to_string(),
                        17 => "udp".to_string(),
                        p => p.to_string(),
                    },
                    s(&f["src"]),
                    u(&f["sport"]),
                    s(&f["dst"]),
                    u(&f["dport"]),
                    s(&f["out_port"]),
                    u(&f["packets"]),
                    u(&f["bytes"])
                );
            }
        }
        Table::Ports => {
            for w in list("workers") {
                let drops: Vec<String> = (w["drops"].as_array().unwrap_or(&empty).iter())
                    .filter(|d| u(&d[1]) > 0)
                    .map(|d| format!("{} {}", s(&d[0]), u(&d[1])))
                    .collect();
                out += &format!(
                    "worker {}: rx {} ({} B)  tx {} ({} B)  handoff out {} in {}  drops: {}\n",
                    u(&w["worker"]),
                    u(&w["rx"]),
                    u(&w["rx_bytes"]),
                    u(&w["tx"]),
                    u(&w["tx_bytes"]),
                    u(&w["handoff_out"]),
                    u(&w["handoff_in"]),
                    if drops.is_empty() {
                        "none".into()
                    } else {
                        drops.join(", ")
                    }
                );
            }
            for p in list("ports") {
                out += &format!(
                    "port {}: kernel rx_dropped {}  tx_dropped {}\n",
                    s(&p["port"]),
                    u(&p["kernel_rx_dropped"]),
                    u(&p["kernel_tx_dropped"])
                );
            }
            for c in list("classes") {
                out += &format!(
                    "port {} class {}: sent {} ({} B)  tail drops {}  red drops {}\n",
                    s(&c["port"]),
                    u(&c["class"]),
                    u(&c["sent"]),
                    u(&c["sent_bytes"]),
                    u(&c["tail_drops"]),
                    u(&c["red_drops"])
                );
            }
        }
        Table::Steering => {
            for p in list("ports") {
                let xdp: Vec<String> = (p["xdp"].as_array().unwrap_or(&empty).iter())
                    .map(|a| format!("{} {}", s(&a[0]), u(&a[1])))
                    .collect();
                out += &format!("port {}: {}\n", s(&p["port"]), xdp.join("  "));
            }
            out += &format!(
                "flow cache: {} cached now; since start {} installed, {} aged out, {} refused\n",
                u(&v["flows_cached"]),
                u(&v["flows_installed"]),
                u(&v["flows_aged"]),
                u(&v["flows_refused"])
            );
        }
    }
    out
}
