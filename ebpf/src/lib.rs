//! linerate's XDP programs (`bpf/*.bpf.c`, compiled by `build.rs`) and their loaders: the
//! steering program and the kernel-side traffic generator.
//!
//! The program decides per packet between the AF_XDP socket of its RX queue, the kernel and
//! drop (first-match rules on protocol, destination prefix and ports), sends ARP and IPv6
//! neighbour discovery to the kernel, counts every decision per CPU, and in max mode rewrites
//! and redirects cached flows inside the kernel. The emulator's host-port program hands each
//! frame to the AF_XDP socket of the interface it came in on. `unsafe` lives only in `abi` (Pod impls).
#![deny(unsafe_code)]

pub mod abi;
pub mod emu;
pub mod generator;
pub mod steer;

pub use abi::{Action, FlowEntry, FlowKey, Rule};
pub use emu::EmuPorts;
pub use generator::Generator;
pub use steer::{AttachMode, Attached, Steering, XdpError};
