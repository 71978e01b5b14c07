//! Compiles the benchmark's own XDP programs (`xdp/*.bpf.c`) with clang for the loaders in
//! `src/bin/` to embed.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

fn main() -> Result<()> {
    let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=xdp/redirect_ref.h");
    compile("redirect_ref", Path::new(&out))
}

fn compile(name: &str, out: &Path) -> Result<()> {
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let c = format!("xdp/{name}.bpf.c");
    println!("cargo:rerun-if-changed={c}");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .args(["-I/usr/include/x86_64-linux-gnu", "-Ixdp", "-c", &c, "-o"])
        .arg(out.join(format!("{name}.bpf.o")))
        .status()
        .with_context(|| format!("running {clang} to build {c}: is clang installed? (apt-get install clang libbpf-dev)"))?;
    if !status.success() {
        bail!("{clang} failed to compile {c} ({status})");
    }
    Ok(())
}
