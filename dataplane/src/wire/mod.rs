//! Zero-copy views over packet bytes, and emitters for building packets.
//!
//! # The rule for untrusted input
//!
//! Every byte that arrives from a network is untrusted. Each view type `Foo<T: AsRef<[u8]>>`
//! has `new_unchecked` (no checks; only for buffers we built ourselves), `check_len` and
//! `new_checked`, which returns [`Error`] for input too short for the fields its getters read
//! or whose length fields disagree with the buffer. After `new_checked` succeeds no getter can
//! panic. Nothing in this module allocates, and no parser panics on any input: property tests
//! over arbitrary bytes (`tests` below each module) and the fuzz targets in `dataplane/fuzz/`
//! hold us to that.

pub mod checksum;
pub mod headers;

pub use headers::{Headers, L3, parse_headers};

/// Why a buffer could not be viewed as a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the header (or than a length field says it is).
    #[error("packet truncated")]
    Truncated,
    /// A field holds a value the format does not allow (version, header length...).
    #[error("malformed header")]
    Malformed,
    /// A checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// Well-formed, but a feature we do not parse (e.g. more than two VLAN tags).
    #[error("unsupported header")]
    Unsupported,
}

pub type Result<T> = core::result::Result<T, Error>;
