//! The SOCKS5 relay (`linerate relay`): [`proto`] is the protocol without I/O.
pub mod proto;
