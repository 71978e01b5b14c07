//! `xdp-redirect-ref`: the forwarding benchmark's XDP_REDIRECT reference (`xdp/redirect_ref.bpf.c`).
//! Attaches the program to `--in`, points its one-slot devmap at `--out` and sets the MACs it
//! writes, then waits for SIGINT/SIGTERM and prints its per-CPU counters summed, as JSON.
//! The attachment is a BPF link: it goes when this process exits, however it exits.
#![deny(unsafe_code)]

use anyhow::{Context, Result, bail};
use aya::Ebpf;
use aya::maps::{Array, DevMap, MapData, PerCpuArray};
use aya::programs::{Xdp, XdpMode};
use clap::Parser;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect_ref.bpf.o"));

/// `enum redirect_counter` in `xdp/redirect_ref.h`.
const REDIRECT_OK: u32 = 0;
const REDIRECT_PASS: u32 = 1;

#[derive(Parser)]
#[command(about = "Minimal XDP_REDIRECT forwarder: every frame from --in goes out of --out")]
struct Args {
    /// Interface to attach to (where the traffic arrives).
    #[arg(long = "in")]
    ingress: String,
    /// Interface to redirect to (on veth, its peer needs an XDP program).
    #[arg(long = "out")]
    egress: String,
    /// Destination MAC written into every frame.
    #[arg(long, value_parser = parse_mac)]
    dst_mac: [u8; 6],
    /// Source MAC written into every frame (default: --out's).
    #[arg(long, value_parser = parse_mac)]
    src_mac: Option<[u8; 6]>,
    /// Attach in skb (generic) mode instead of driver mode.
    #[arg(long)]
    skb: bool,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("'{s}' is not a MAC address like 02:00:5e:10:00:01");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for m in mac.iter_mut() {
        let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

fn sysfs(dev: &str, file: &str) -> Result<String> {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/{file}"))
        .map(|s| s.trim().to_string())
        .with_context(|| format!("{dev}: no such network interface"))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let out_ifindex: u32 = sysfs(&a.egress, "ifindex")?.parse()?;
    sysfs(&a.ingress, "ifindex")?;
    let src_mac = match a.src_mac {
        Some(m) => m,
        None => parse_mac(&sysfs(&a.egress, "address")?).map_err(anyhow::Error::msg)?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    ctrlc::set_handler(move || s.store(true, Ordering::Relaxed))
        .context("installing the SIGINT/SIGTERM handler")?;

    let mut ebpf = Ebpf::load(OBJECT).context("loading redirect_ref.bpf.o")?;
    let mut cfg: Array<MapData, [u8; 12]> = take(&mut ebpf, "cfg")?;
    let mut tx_port: DevMap<MapData> = take(&mut ebpf, "tx_port")?;
    let counters: PerCpuArray<MapData, u64> = take(&mut ebpf, "counters")?;
    let mut value = [0u8; 12];
    value[..6].copy_from_slice(&a.dst_mac);
    value[6..].copy_from_slice(&src_mac);
    cfg.set(0, value, 0).context("BPF map cfg")?;
    tx_port
        .set(0, out_ifindex, None, 0)
        .context("BPF map tx_port (devmap)")?;
    let prog: &mut Xdp = ebpf
        .program_mut("redirect_ref")
        .context("program redirect_ref missing from the object")?
        .try_into()?;
    prog.load().context("loading XDP program redirect_ref")?;
    let mode = if a.skb { XdpMode::Skb } else { XdpMode::Driver };
    prog.attach(&a.ingress, mode)
        .with_context(|| format!("attaching XDP to {} in {mode:?} mode", a.ingress))?;
    eprintln!(
        "xdp-redirect-ref: redirecting {} -> {} (ifindex {out_ifindex})",
        a.ingress, a.egress
    );
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sum = |i: u32| -> Result<u64> {
        Ok(counters
            .get(&i, 0)
            .context("BPF map counters")?
            .iter()
            .sum())
    };
    let j = serde_json::json!({
        "redirected": sum(REDIRECT_OK)?,
        "passed": sum(REDIRECT_PASS)?,
    });
    println!("{j}");
    Ok(())
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let Some(m) = ebpf.take_map(name) else {
        bail!("BPF map {name} missing from the object");
    };
    T::try_from(m).with_context(|| format!("BPF map {name}"))
}
