//! The running emulation's control socket (`/run/linerate/<name>/ctl.sock`, root only): one
//! JSON request per line, one JSON answer per line. `linerate status`, `link` and `down` talk
//! to `up` through it. The server hands each request to the thread that owns the emulation
//! and never touches it itself.

use crate::emulator::Status;
use crate::netns;
use crate::topo::LinkSpec;
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Changes the link between `a` and `b`: settings (`set`, keys as in the topology file),
    /// and/or `up`. With `from`, only the direction leaving that node.
    Link {
        a: String,
        b: String,
        from: Option<String>,
        set: Option<Box<LinkSpec>>,
        up: Option<bool>,
    },
    /// Starts flows (`[[flows]]` entries, as in a topology file) and stops flows by name.
    Flows {
        #[serde(default)]
        add: Vec<crate::flows::FlowToml>,
        #[serde(default)]
        stop: Vec<String>,
    },
    /// Stops the emulation and removes everything.
    Down,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer {
            ok: true,
            error: None,
            status: None,
        }
    }
    pub fn err(e: impl Into<String>) -> Answer {
        Answer {
            ok: false,
            error: Some(e.into()),
            status: None,
        }
    }
}

/// A request and where its answer goes.
pub type Call = (Request, SyncSender<Answer>);

pub fn socket_path(emu: &str) -> PathBuf {
    netns::run_dir(emu).join("ctl.sock")
}

/// Listens on the emulation's socket; requests arrive on the returned channel.
pub fn serve(emu: &str) -> io::Result<Receiver<Call>> {
    let path = socket_path(emu);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let (tx, rx) = sync_channel::<Call>(16);
    std::thread::Builder::new()
        .name("emu-ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let tx = tx.clone();
                // One thread per client: a slow client holds only its own thread.
                let _ = std::thread::Builder::new()
                    .name("emu-ctl-client".into())
                    .spawn(move || client(conn, tx));
            }
        })?;
    Ok(rx)
}

fn client(conn: UnixStream, tx: SyncSender<Call>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut line = String::new();
    // One request of at most 1 MiB per connection.
    let mut r = BufReader::new(conn).take(1 << 20);
    if r.read_line(&mut line).is_err() {
        return;
    }
    let answer = match serde_json::from_str::<Request>(&line) {
        Err(e) => Answer::err(format!("a request the emulator cannot read: {e}")),
        Ok(req) => {
            let (atx, arx) = sync_channel(1);
            if tx.send((req, atx)).is_err() {
                Answer::err("the emulation is stopping")
            } else {
                arx.recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| Answer::err("the emulation did not answer"))
            }
        }
    };
    if let Ok(text) = serde_json::to_string(&answer) {
        let _ = writeln!(w, "{text}");
    }
}

/// Sends `req` to emulation `emu` and waits for the answer.
pub fn call(emu: &str, req: &Request) -> io::Result<Answer> {
    let path = socket_path(emu);
    let mut s = UnixStream::connect(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e} (is emulation '{emu}' up?)", path.display()),
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let text = serde_json::to_string(req).map_err(io::Error::other)?;
    writeln!(s, "{text}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("answer from {emu}: {e}"),
        )
    })
}

use std::io::Read as _;
