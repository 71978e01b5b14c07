//! Loading and attaching `bpf/emu.bpf.c`: the emulator's host ports over AF_XDP.
//!
//! One program is attached (native mode) to the emulator's end of every host interface's veth
//! pair and sends each frame to the AF_XDP socket registered for that interface. Attachments
//! are BPF links held by [`EmuPorts`]: dropping it, or the process dying, detaches them all.

use crate::steer::{XdpError, program_mut, take};
use aya::Ebpf;
use aya::maps::{HashMap, MapData, XskMap};
use aya::programs::XdpMode;
use std::os::fd::AsRawFd;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/emu.bpf.o"));
const EMU: &str = "linerate_emu";

/// Sockets the program can hold (`EMU_MAX_PORTS` in the C source).
pub const MAX_PORTS: u32 = 65536;

/// The loaded host-port program and its two maps.
pub struct EmuPorts {
    ebpf: Ebpf,
    xsks: XskMap<MapData>,
    ports: HashMap<MapData, u32, u32>,
}

impl EmuPorts {
    pub fn load() -> Result<EmuPorts, XdpError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|source| XdpError::Load { source })?;
        let xsks = take(&mut ebpf, "emu_xsks")?;
        let ports = take(&mut ebpf, "emu_ports")?;
        program_mut(&mut ebpf, EMU)?
            .load()
            .map_err(|source| XdpError::Program {
                program: EMU,
                source,
            })?;
        Ok(EmuPorts { ebpf, xsks, ports })
    }

    /// Attaches the program in native mode to interface `ifindex` (named `ifname` in errors)
    /// of the calling thread's network namespace.
    pub fn attach(&mut self, ifindex: u32, ifname: &str) -> Result<(), XdpError> {
        program_mut(&mut self.ebpf, EMU)?
            .attach_to_if_index(ifindex, XdpMode::Driver)
            .map(|_| ())
            .map_err(|source| XdpError::Attach {
                ifname: ifname.to_string(),
                mode: "driver",
                source,
            })
    }

    /// Frames arriving on interface `ifindex` go to socket `fd`, kept in slot `slot`
    /// (below [`MAX_PORTS`], one per interface).
    pub fn bind(&mut self, ifindex: u32, slot: u32, fd: impl AsRawFd) -> Result<(), XdpError> {
        self.xsks.set(slot, fd, 0).map_err(|source| XdpError::Map {
            map: "emu_xsks",
            source,
        })?;
        self.ports
            .insert(ifindex, slot, 0)
            .map_err(|source| XdpError::Map {
                map: "emu_ports",
                source,
            })
    }
}
