//! Who may register, and as which node: bearer tokens bound to node ids, and the TLS the
//! controller speaks.
//!
//! A node says which node it is in the `Linerate-Node` header of its WebSocket upgrade and
//! proves it with its bearer token; the hello that follows must name the same node. Tokens are
//! kept as SHA-256 digests only, indexed by digest: a token is looked up by its digest (the
//! time that takes says nothing about any stored token) and the node it belongs to compared
//! with the one the node claims. The table is swapped whole ([`NodeTokens::replace`]): a
//! rotated file or table takes effect for the next registration and never touches a session.
//!
//! Never: keeps a token in clear; lets a token for one node register another.

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// The header naming the node at the upgrade.
pub const NODE_HEADER: &str = "linerate-node";

/// How nodes prove who they are.
#[derive(Clone)]
pub enum Auth {
    /// One token for every node, and the node id taken on trust: the old plain mode, for
    /// loopback tests and the emulator's in-process controller.
    Shared(String),
    /// One token (or several, while rotating) per node, bound to its id.
    PerNode(Arc<NodeTokens>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Shared(_) => f.write_str("Auth::Shared(..)"),
            Auth::PerNode(t) => write!(f, "Auth::PerNode({} tokens)", t.len()),
        }
    }
}

/// What a token check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// No node has this token.
    Unknown,
    /// The token is another node's (the one named here).
    OtherNode(String),
}

/// A token's digest, as stored and looked up.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Token digests and the node each belongs to.
#[derive(Default)]
pub struct NodeTokens {
    by_digest: ArcSwap<HashMap<[u8; 32], String>>,
}

impl NodeTokens {
    pub fn new(table: HashMap<[u8; 32], String>) -> NodeTokens {
        NodeTokens {
            by_digest: ArcSwap::from_pointee(table),
        }
    }

    /// Replaces the whole table (a rotation).
    pub fn replace(&self, table: HashMap<[u8; 32], String>) {
        self.by_digest.store(Arc::new(table));
    }

    pub fn len(&self) -> usize {
        self.by_digest.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `token` is `node`'s.
    pub fn check(&self, node: &str, token: &str) -> Verdict {
        match self.by_digest.load().get(&digest(token)) {
            None => Verdict::Unknown,
            Some(owner) if owner == node => Verdict::Ok,
            Some(owner) => Verdict::OtherNode(owner.clone()),
        }
    }
}

/// A token file: one `NODE TOKEN` per line (a node may have several lines while its token is
/// rotated); `#` comments and blank lines. Tokens are 16 to 256 visible ASCII characters, and
/// one token belongs to one node.
pub fn parse_token_file(text: &str) -> Result<HashMap<[u8; 32], String>, String> {
    let mut table = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("line {}", i + 1);
        let mut words = line.split_whitespace();
        let (Some(node), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("{}: expected NODE TOKEN", at()));
        };
        linerate_proto::check_name("node", node).map_err(|e| format!("{}: {e}", at()))?;
        check_token(token).map_err(|e| format!("{}: {e}", at()))?;
        if let Some(other) = table.insert(digest(token), node.to_string())
            && other != node
        {
            return Err(format!(
                "{}: node '{node}' has the token of node '{other}': one token, one node",
                at()
            ));
        }
    }
    if table.is_empty() {
        return Err("no NODE TOKEN line".into());
    }
    Ok(table)
}

/// A token a header can carry and a guess cannot find.
pub fn check_token(token: &str) -> Result<(), String> {
    if !(16..=256).contains(&token.len()) {
        return Err(format!(
            "a token must be 16 to 256 characters (this one has {})",
            token.len()
        ));
    }
    if token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("a token may hold only visible ASCII characters".into());
    }
    Ok(())
}

/// rustls over *ring*: it builds with the machine's C compiler in seconds, where aws-lc-rs
/// (rustls's default, with post-quantum key exchange) adds a large C build. The cost is no
/// post-quantum key exchange (docs/CONTROL.md says so).
#[allow(deprecated)]
pub fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A TLS server configuration from PEM files: the certificate chain and its private key.
pub fn tls_server(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the key: {e}"))?;
    let provider = Arc::new(ring_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_bound_to_its_node() {
        let t = NodeTokens::new(
            parse_token_file(
                "# rotation: a has two\na aaaaaaaaaaaaaaaa-1\na aaaaaaaaaaaaaaaa-2\n\nb bbbbbbbbbbbbbbbbbbbb\n",
            )
            .unwrap(),
        );
        assert_eq!(t.check("a", "aaaaaaaaaaaaaaaa-1"), Verdict::Ok);
        assert_eq!(t.check("a", "aaaaaaaaaaaaaaaa-2"), Verdict::Ok);
        assert_eq!(
            t.check("b", "aaaaaaaaaaaaaaaa-1"),
            Verdict::OtherNode("a".into())
        );
        assert_eq!(t.check("a", "bbbbbbbbbbbbbbbbbbbX"), Verdict::Unknown);
        t.replace(parse_token_file("a cccccccccccccccccc\n").unwrap());
        assert_eq!(
            t.check("a", "aaaaaaaaaaaaaaaa-1"),
            Verdict::Unknown,
            "rotated out"
        );
        assert_eq!(t.check("a", "cccccccccccccccccc"), Verdict::Ok);
    }

    #[test]
    fn bad_token_files_are_refused_by_line() {
        for (text, want) in [
            ("a\n", "line 1: expected NODE TOKEN"),
            ("a short\n", "line 1: a token must be 16"),
            ("# c\nbad/name aaaaaaaaaaaaaaaaaa\n", "line 2"),
            (
                "a aaaaaaaaaaaaaaaaaa\nb aaaaaaaaaaaaaaaaaa\n",
                "has the token of node 'a'",
            ),
            ("a aaaaaaaaaaaaaaaaaa extra\n", "expected NODE TOKEN"),
            ("# nothing\n", "no NODE TOKEN"),
        ] {
            let e = parse_token_file(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
