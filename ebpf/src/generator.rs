//! The kernel-side traffic generator (`bpf/gen.bpf.c`): frames are replayed by
//! `BPF_PROG_RUN` in live-frames mode, stamped (flow, per-flow sequence, send time) and sent
//! out of the interface with `XDP_TX`, without a copy or a system call per frame.

use crate::abi::GenConfig;
use crate::steer::XdpError;
use aya::maps::{Array, MapData};
use aya::{Ebpf, TestRun, TestRunAttrs, TestRunOptions};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gen.bpf.o"));
const GEN: &str = "linerate_gen";

/// The loaded generator program.
pub struct Generator {
    ebpf: Ebpf,
    config: Array<MapData, GenConfig>,
    count: Array<MapData, u64>,
}

impl Generator {
    pub fn load() -> Result<Generator, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|source| XdpError::Load { source })?;
        let config = crate::steer::take(&mut ebpf, "gen_config")?;
        let count = crate::steer::take(&mut ebpf, "gen_count")?;
        crate::steer::program_mut(&mut ebpf, GEN)?
            .load()
            .map_err(|source| XdpError::Program {
                program: GEN,
                source,
            })?;
        Ok(Generator {
            ebpf,
            config,
            count,
        })
    }

    /// Sets what the program writes into each frame (see `GenConfig`).
    pub fn configure(&mut self, cfg: GenConfig) -> Result<(), XdpError> {
        self.config.set(0, cfg, 0).map_err(|source| XdpError::Map {
            map: "gen_config",
            source,
        })
    }

    /// Runs the program `iterations` times on `frame` as received on `ifindex`, in batches of
    /// `batch` (at most 256; 0 means the kernel's default of 64). Each iteration sends one
    /// frame out of `ifindex`, unless pacing or the limit says not yet / no more (see
    /// `GenConfig`); [`Generator::generated`] tells how many were sent. Every call has a
    /// fixed cost of milliseconds, so make few long calls. The interface's peer must have an
    /// XDP program if it is a veth.
    pub fn run(
        &self,
        frame: &[u8],
        ifindex: u32,
        iterations: u32,
        batch: u32,
    ) -> Result<(), XdpError> {
        let prog = crate::steer::program(&self.ebpf, GEN)?;
        let ctx = crate::abi::XdpMd {
            data_end: frame.len() as u32,
            ingress_ifindex: ifindex,
            ..Default::default()
        };
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx.as_bytes()),
            repeat: iterations,
            attrs: TestRunAttrs::new().xdp_live_frames(batch.min(256)),
            ..Default::default()
        })
        .map(|_| ())
        .map_err(|source| XdpError::Program {
            program: GEN,
            source,
        })
    }

    /// Frames generated so far by this instance.
    pub fn generated(&self) -> Result<u64, XdpError> {
        self.count.get(&0, 0).map_err(|source| XdpError::Map {
            map: "gen_count",
            source,
        })
    }
}
