//! Compiles `bpf/*.bpf.c` with clang into BPF objects that `src/` embeds with `include_bytes!`.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-env-changed=CLANG");
    for src in ["steer"] {
        let c = format!("bpf/{src}.bpf.c");
        println!("cargo:rerun-if-changed={c}");
        let obj = out.join(format!("{src}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .args(["-I/usr/include/x86_64-linux-gnu", "-Ibpf", "-c", &c, "-o"])
            .arg(&obj)
            .status()
            .with_context(|| {
                format!("running {clang} to build {c}: is clang installed? (apt-get install clang libbpf-dev)")
            })?;
        if !status.success() {
            bail!("{clang} failed to compile {c} ({status})");
        }
    }
    println!("cargo:rerun-if-changed=bpf/steer.h");
    Ok(())
}
