//! Where a relayed connection or datagram really goes, and whether the relay may send it there.
//!
//! A destination has several spellings: `127.0.0.2`, `::ffff:127.0.0.2` (IPv4-mapped),
//! `::127.0.0.2` (IPv4-compatible), and a name that resolves to one of them; `0.0.0.0` and
//! `::` reach this host. Every check here works on one canonical form: mapped and compatible
//! IPv6 addresses become the IPv4 address they stand for, and an unspecified address becomes
//! every address of this host (its loopback and each interface's). A deny-list prefix is
//! brought to the same form, so `10.0.0.0/8` and `::ffff:10.0.0.0/104` refuse the same
//! destinations. The relay's own listener is refused in every spelling too, so a client cannot
//! chain the relay into itself.

use linerate_dataplane::logic::Prefix;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// `ip` in its canonical form: IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`,
/// but not `::` or `::1`) IPv6 addresses as the IPv4 address; every other address unchanged.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4.into();
    }
    let bits = u128::from(v6);
    if bits >> 32 == 0 && !v6.is_unspecified() && !v6.is_loopback() {
        return Ipv4Addr::from(bits as u32).into();
    }
    ip
}

/// `a` with its address in canonical form (see [`canonical_ip`]).
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port())
}

/// A prefix in the canonical form of its addresses: an IPv6 prefix inside `::ffff:0:0/96` is
/// the IPv4 prefix it maps (`::ffff:10.0.0.0/104` is `10.0.0.0/8`); others unchanged.
/// Compatible-form prefixes are left as they are: `::/96` would otherwise mean all of IPv4.
pub fn canonical_prefix(p: Prefix) -> Prefix {
    if let Prefix::V6(v6) = p
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(q) = Prefix::new(v4.into(), v6.prefix_len() - 96)
    {
        return q;
    }
    p
}

/// The addresses of this host, read from the interfaces (getifaddrs) at most once a second so
/// that addresses added while the relay runs are known too.
pub struct LocalAddrs {
    cache: RwLock<(Option<Instant>, Vec<IpAddr>)>,
    /// Tests give a fixed list instead.
    fixed: bool,
}

const REFRESH: Duration = Duration::from_secs(1);

impl LocalAddrs {
    /// This host's addresses, read from its interfaces.
    pub fn system() -> LocalAddrs {
        LocalAddrs {
            cache: RwLock::new((None, Vec::new())),
            fixed: false,
        }
    }

    /// A fixed list (tests).
    pub fn fixed(addrs: Vec<IpAddr>) -> LocalAddrs {
        LocalAddrs {
            cache: RwLock::new((Some(Instant::now()), addrs)),
            fixed: true,
        }
    }

    fn read_interfaces() -> Vec<IpAddr> {
        let Ok(ifs) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        ifs.filter_map(|i| {
            let a = i.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .map(canonical_ip)
        .collect()
    }

    /// Calls `f` with the current list.
    fn with<R>(&self, f: impl FnOnce(&[IpAddr]) -> R) -> R {
        let fresh = |c: &(Option<Instant>, Vec<IpAddr>)| {
            self.fixed || c.0.is_some_and(|t| t.elapsed() < REFRESH)
        };
        {
            let c = self.cache.read().unwrap_or_else(|e| e.into_inner());
            if fresh(&c) {
                return f(&c.1);
            }
        }
        let addrs = Self::read_interfaces();
        let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
        *c = (Some(Instant::now()), addrs);
        f(&c.1)
    }

    /// Whether `ip` (canonical) reaches this host: loopback, unspecified, or an interface's.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.with(|l| l.contains(&ip))
    }
}

/// The relay's destination policy: the deny-list and its own listening address.
pub struct DestPolicy {
    deny: Vec<Prefix>,
    listen: SocketAddr,
    local: LocalAddrs,
}

impl DestPolicy {
    /// `listen` is the address the relay really listens on (its port resolved when 0 was
    /// asked for).
    pub fn new(deny: &[Prefix], listen: SocketAddr, local: LocalAddrs) -> DestPolicy {
        DestPolicy {
            deny: deny.iter().copied().map(canonical_prefix).collect(),
            listen: canonical(listen),
            local,
        }
    }

    /// Calls `f` with each address `ip` (canonical) reaches: itself, or for an unspecified
    /// address this host's loopback and every interface address (of either family: a
    /// conservative reading, since a service listening on an unspecified address answers on
    /// all of them). Stops at the first `true`.
    fn any_reached(&self, ip: IpAddr, mut f: impl FnMut(IpAddr) -> bool) -> bool {
        if !ip.is_unspecified() {
            return f(ip);
        }
        let loopback: IpAddr = match ip {
            IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        };
        f(ip) || f(loopback) || self.local.with(|l| l.iter().any(|&a| f(a)))
    }

    /// Whether the relay refuses to send to `a`, in any of its spellings: a denied prefix, or
    /// the relay's own listener (every local address of it when it listens on an unspecified
    /// address).
    pub fn denied(&self, a: SocketAddr) -> bool {
        let ip = canonical_ip(a.ip());
        if self.any_reached(ip, |r| self.deny.iter().any(|p| p.contains(r))) {
            return true;
        }
        if a.port() != self.listen.port() {
            return false;
        }
        if self.listen.ip().is_unspecified() {
            self.any_reached(ip, |r| self.local.is_local(r))
        } else {
            let own = self.listen.ip();
            self.any_reached(ip, |r| r == own)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        Prefix::parse(s).unwrap()
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn canonical_forms() {
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(canonical_ip("::ffff:127.0.0.2".parse().unwrap()), v4);
        assert_eq!(canonical_ip("::127.0.0.2".parse().unwrap()), v4);
        assert_eq!(canonical_ip(v4), v4);
        for kept in ["::", "::1", "2001:db8::1", "fe80::1"] {
            let ip: IpAddr = kept.parse().unwrap();
            assert_eq!(canonical_ip(ip), ip, "{kept}");
        }
        assert_eq!(canonical_prefix(p("::ffff:10.0.0.0/104")), p("10.0.0.0/8"));
        assert_eq!(canonical_prefix(p("::/96")), p("::/96"));
        assert_eq!(canonical_prefix(p("fe80::/10")), p("fe80::/10"));
    }

    /// A policy on a host whose interfaces hold `local` and, as on every host, loopback.
    fn policy(deny: &[&str], listen: &str, local: &[&str]) -> DestPolicy {
        let deny: Vec<Prefix> = deny.iter().map(|s| p(s)).collect();
        let local = ["127.0.0.1", "::1"]
            .iter()
            .chain(local)
            .map(|s| s.parse().unwrap())
            .collect();
        DestPolicy::new(&deny, a(listen), LocalAddrs::fixed(local))
    }

    #[test]
    fn a_denied_address_is_denied_in_every_spelling() {
        let d = policy(&["127.0.0.2/32", "169.254.0.0/16"], "127.0.0.1:1080", &[]);
        for dest in [
            "127.0.0.2:80",
            "[::ffff:127.0.0.2]:80",
            "[::127.0.0.2]:80",
            "[::ffff:169.254.169.254]:80",
        ] {
            assert!(d.denied(a(dest)), "{dest}");
        }
        assert!(!d.denied(a("127.0.0.3:80")));
        assert!(!d.denied(a("[::ffff:127.0.0.3]:80")));
        // A mapped-form deny prefix refuses the IPv4 spelling as well.
        let d = policy(&["::ffff:10.0.0.0/104"], "127.0.0.1:1080", &[]);
        assert!(d.denied(a("10.1.2.3:80")));
        assert!(!d.denied(a("11.1.2.3:80")));
    }

    #[test]
    fn the_unspecified_address_is_this_host() {
        // Denying loopback denies 0.0.0.0 and ::, which reach it.
        let d = policy(&["127.0.0.0/8", "::1/128"], "127.0.0.1:1080", &["10.0.0.5"]);
        assert!(d.denied(a("0.0.0.0:22")));
        assert!(d.denied(a("[::]:22")));
        assert!(d.denied(a("[::ffff:0.0.0.0]:22")));
        // Denying one of the host's interface addresses denies the unspecified address too.
        let d = policy(&["10.0.0.5/32"], "127.0.0.1:1080", &["10.0.0.5"]);
        assert!(d.denied(a("0.0.0.0:22")));
        assert!(!d.denied(a("10.0.0.6:22")));
    }

    #[test]
    fn the_relays_own_listener_is_refused_in_every_spelling() {
        let d = policy(&[], "127.0.0.1:1080", &["10.0.0.5"]);
        for dest in [
            "127.0.0.1:1080",
            "[::ffff:127.0.0.1]:1080",
            "[::127.0.0.1]:1080",
            "0.0.0.0:1080",
            "[::]:1080",
        ] {
            assert!(d.denied(a(dest)), "{dest}");
        }
        assert!(!d.denied(a("127.0.0.1:1081")));
        assert!(!d.denied(a("10.0.0.6:1080")));
        // Listening on 0.0.0.0: every local address of this host is the listener.
        let d = policy(&[], "0.0.0.0:1080", &["10.0.0.5", "2001:db8::5"]);
        for dest in [
            "10.0.0.5:1080",
            "[::ffff:10.0.0.5]:1080",
            "127.0.0.7:1080",
            "[::1]:1080",
            "[2001:db8::5]:1080",
            "0.0.0.0:1080",
        ] {
            assert!(d.denied(a(dest)), "{dest}");
        }
        assert!(!d.denied(a("10.0.0.6:1080")));
        assert!(!d.denied(a("10.0.0.5:1081")));
    }

    #[test]
    fn system_addresses_include_loopback() {
        let l = LocalAddrs::system();
        assert!(l.is_local("127.0.0.1".parse().unwrap()));
        assert!(l.with(|a| a.contains(&"127.0.0.1".parse().unwrap())));
        assert!(!l.is_local("192.0.2.77".parse().unwrap()));
    }
}
