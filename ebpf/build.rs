//! Compiles `bpf/*.bpf.c` with clang into BPF objects that `src/` embeds.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

fn main() -> Result<()> {
    let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=bpf/steer.h");
    println!("cargo:rerun-if-changed=bpf/gen.h");
    compile("steer", Path::new(&out))?;
    compile("gen", Path::new(&out))?;
    compile("emu", Path::new(&out))
}

fn compile(name: &str, out: &Path) -> Result<()> {
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let c = format!("bpf/{name}.bpf.c");
    println!("cargo:rerun-if-changed={c}");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .args(["-I/usr/include/x86_64-linux-gnu", "-Ibpf", "-c", &c, "-o"])
        .arg(out.join(format!("{name}.bpf.o")))
        .status()
        .with_context(|| format!("running {clang} to build {c}: is clang installed? (apt-get install clang libbpf-dev)"))?;
    if !status.success() {
        bail!("{clang} failed to compile {c} ({status})");
    }
    Ok(())
}
