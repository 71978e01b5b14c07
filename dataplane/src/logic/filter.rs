//! 5-tuple access control: an ordered rule list where the first matching rule decides whether
//! a packet may go on to the inner logic or is dropped as [`DropReason::Filtered`].
//!
//! Owns the rules ([`Acl`]), the wrapper ([`Filter`]) and the rule syntax ([`Rule`]'s
//! `FromStr`/`Display`):
//!
//! ```text
//! permit|deny <proto> <src> <dst> [sport <ports>] [dport <ports>]
//!   proto  any | tcp | udp | icmp | icmpv6 | sctp | 0-255
//!   src    any | 10.0.0.0/8 | 192.0.2.1 | 2001:db8::/32 | 2001:db8::1
//!   ports  any | 53 | 1024-65535
//! e.g.     deny udp 10.0.0.0/8 any dport 53
//! ```
//!
//! Matching never allocates and never looks at the frame bytes, only at [`Headers`]. An IPv4
//! prefix never matches an IPv6 packet nor the reverse. Packets without ports (ICMP, non-first
//! fragments) have ports 0, so a port condition other than `any` does not match them.
//! Frames that are not IP are not matched against the rules: they get the list's `non_ip`
//! action (permit by default, so that ARP keeps working behind a deny-all list).

use super::{Logic, LpmError};
use crate::verdict::{DropReason, PortId, Verdict};
use crate::wire::{Headers, L3};
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::ops::RangeInclusive;
use core::str::FromStr;
use std::time::Duration;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hand the packet to the inner logic.
    Permit,
    /// Drop it as [`DropReason::Filtered`].
    Deny,
}

/// An IPv4 prefix with no bits set past its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, LpmError> {
        if len > 32 {
            return Err(LpmError::PrefixTooLong { len, max: 32 });
        }
        let p = Ipv4Prefix { addr, len };
        let masked = Ipv4Addr::from(u32::from(addr) & p.mask());
        if masked != addr {
            return Err(LpmError::HostBitsSet {
                prefix: addr.into(),
                len,
                masked: masked.into(),
            });
        }
        Ok(p)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    #[inline]
    fn mask(&self) -> u32 {
        (u32::MAX).checked_shl(32 - self.len as u32).unwrap_or(0)
    }

    #[inline]
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (u32::from(a) ^ u32::from(self.addr)) & self.mask() == 0
    }
}

/// An IPv6 prefix with no bits set past its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Prefix {
    addr: Ipv6Addr,
    len: u8,
}

impl Ipv6Prefix {
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Self, LpmError> {
        if len > 128 {
            return Err(LpmError::PrefixTooLong { len, max: 128 });
        }
        let p = Ipv6Prefix { addr, len };
        let masked = Ipv6Addr::from(u128::from(addr) & p.mask());
        if masked != addr {
            return Err(LpmError::HostBitsSet {
                prefix: addr.into(),
                len,
                masked: masked.into(),
            });
        }
        Ok(p)
    }

    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    #[inline]
    fn mask(&self) -> u128 {
        (u128::MAX).checked_shl(128 - self.len as u32).unwrap_or(0)
    }

    #[inline]
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        (u128::from(a) ^ u128::from(self.addr)) & self.mask() == 0
    }
}

/// An IPv4 or IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    V4(Ipv4Prefix),
    V6(Ipv6Prefix),
}

impl Prefix {
    /// `addr/len`, checked as by [`Ipv4Prefix::new`] / [`Ipv6Prefix::new`].
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, LpmError> {
        match addr {
            IpAddr::V4(a) => Ipv4Prefix::new(a, len).map(Prefix::V4),
            IpAddr::V6(a) => Ipv6Prefix::new(a, len).map(Prefix::V6),
        }
    }

    /// Whether `a` is inside this prefix (an address of the other family never is).
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self, a) {
            (Prefix::V4(p), IpAddr::V4(a)) => p.contains(a),
            (Prefix::V6(p), IpAddr::V6(a)) => p.contains(a),
            _ => false,
        }
    }

    /// `10.0.0.0/8`, `fe80::/10`, or a bare address (a host prefix).
    pub fn parse(s: &str) -> Result<Prefix, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an address or prefix like 10.0.0.0/8"))?;
        let len = match len {
            Some(l) => l
                .trim()
                .parse()
                .map_err(|_| format!("'{s}': '{l}' is not a prefix length"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Prefix::new(addr, len).map_err(|e| format!("'{s}': {e}"))
    }

    fn is_v4(&self) -> bool {
        match self {
            Prefix::V4(_) => true,
            Prefix::V6(_) => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::V4(p) => write!(f, "{}/{}", p.addr, p.len),
            Prefix::V6(p) => write!(f, "{}/{}", p.addr, p.len),
        }
    }
}

#[inline]
fn v4_matches(p: &Option<Prefix>, a: Ipv4Addr) -> bool {
    match p {
        None => true,
        Some(Prefix::V4(p)) => p.contains(a),
        Some(Prefix::V6(_)) => false,
    }
}

#[inline]
fn v6_matches(p: &Option<Prefix>, a: Ipv6Addr) -> bool {
    match p {
        None => true,
        Some(Prefix::V4(_)) => false,
        Some(Prefix::V6(p)) => p.contains(a),
    }
}

/// One access-control rule; `None` and full port ranges match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    /// IP protocol number (after IPv6 extension headers).
    pub proto: Option<u8>,
    pub src: Option<Prefix>,
    pub dst: Option<Prefix>,
    pub src_ports: RangeInclusive<u16>,
    pub dst_ports: RangeInclusive<u16>,
}

// A linear scan reads every rule up to the first match: keep them within a cache line.
const _: () = assert!(core::mem::size_of::<Rule>() <= 64);

const ALL_PORTS: RangeInclusive<u16> = 0..=u16::MAX;

impl Rule {
    /// A rule that matches every IP packet.
    pub fn any(action: Action) -> Self {
        Rule {
            action,
            proto: None,
            src: None,
            dst: None,
            src_ports: ALL_PORTS,
            dst_ports: ALL_PORTS,
        }
    }

    /// Whether the rule matches an IP packet; never matches a frame without IP.
    #[inline]
    pub fn matches(&self, hdr: &Headers) -> bool {
        if self.proto.is_some_and(|p| p != hdr.proto)
            || !self.src_ports.contains(&hdr.src_port)
            || !self.dst_ports.contains(&hdr.dst_port)
        {
            return false;
        }
        match hdr.l3 {
            L3::Ipv4 { src, dst, .. } => v4_matches(&self.src, src) && v4_matches(&self.dst, dst),
            L3::Ipv6 { src, dst, .. } => v6_matches(&self.src, src) && v6_matches(&self.dst, dst),
            L3::Arp | L3::Other => false,
        }
    }
}

/// Why a rule string could not be parsed. Each message names the offending token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleParseError {
    #[error(
        "empty rule; expected `permit|deny <proto> <src> <dst> [sport <ports>] [dport <ports>]`"
    )]
    Empty,
    #[error("`{token}` is not an action; expected `permit` or `deny`")]
    Action { token: String },
    #[error(
        "`{token}` is not a protocol; expected any, tcp, udp, icmp, icmpv6, sctp or a number 0-255"
    )]
    Proto { token: String },
    #[error(
        "`{token}` is not an address; expected any, an address, or a prefix such as 10.0.0.0/8 or 2001:db8::/32"
    )]
    Address { token: String },
    #[error("bad prefix `{token}`: {source}")]
    Prefix {
        token: String,
        #[source]
        source: LpmError,
    },
    #[error(
        "`{token}` is not a port; expected any, a number 0-65535 or a range such as 1024-65535"
    )]
    Port { token: String },
    #[error("the rule ends where its {what} should be")]
    Missing { what: &'static str },
    #[error("unexpected `{token}`; expected `sport <ports>` or `dport <ports>`")]
    Unexpected { token: String },
    #[error("`{token}` is given twice")]
    Repeated { token: String },
    #[error(
        "source {src} and destination {dst} are of different IP versions: the rule could never match"
    )]
    MixedFamilies { src: Prefix, dst: Prefix },
    #[error("`{token}` needs a protocol with ports (tcp, udp, sctp or any), not `{proto}`")]
    PortsWithoutPorts { token: &'static str, proto: String },
}

const PROTOCOLS: [(&str, u8); 5] = [
    ("tcp", 6),
    ("udp", 17),
    ("icmp", 1),
    ("icmpv6", 58),
    ("sctp", 132),
];

/// Protocols whose first four L4 bytes are the source and destination ports.
fn has_ports(proto: Option<u8>) -> bool {
    matches!(proto, None | Some(6 | 17 | 132))
}

fn parse_proto(t: &str) -> Result<Option<u8>, RuleParseError> {
    if t.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    if let Some(&(_, n)) = PROTOCOLS
        .iter()
        .find(|(name, _)| t.eq_ignore_ascii_case(name))
    {
        return Ok(Some(n));
    }
    t.parse().map(Some).map_err(|_| RuleParseError::Proto {
        token: t.to_owned(),
    })
}

fn parse_addr(t: &str) -> Result<Option<Prefix>, RuleParseError> {
    if t.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    let bad = || RuleParseError::Address {
        token: t.to_owned(),
    };
    let (addr, len) = match t.split_once('/') {
        Some((a, l)) => {
            let addr: IpAddr = a.parse().map_err(|_| bad())?;
            (addr, l.parse::<u8>().map_err(|_| bad())?)
        }
        None => {
            let addr: IpAddr = t.parse().map_err(|_| bad())?;
            let host = if addr.is_ipv4() { 32 } else { 128 };
            (addr, host)
        }
    };
    Prefix::new(addr, len)
        .map(Some)
        .map_err(|source| RuleParseError::Prefix {
            token: t.to_owned(),
            source,
        })
}

fn parse_ports(t: &str) -> Result<RangeInclusive<u16>, RuleParseError> {
    if t.eq_ignore_ascii_case("any") {
        return Ok(ALL_PORTS);
    }
    let bad = || RuleParseError::Port {
        token: t.to_owned(),
    };
    let (lo, hi) = t.split_once('-').unwrap_or((t, t));
    let lo: u16 = lo.parse().map_err(|_| bad())?;
    let hi: u16 = hi.parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

impl FromStr for Rule {
    type Err = RuleParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut toks = s.split_whitespace();
        let action = match toks.next() {
            None => return Err(RuleParseError::Empty),
            Some(t) if t.eq_ignore_ascii_case("permit") => Action::Permit,
            Some(t) if t.eq_ignore_ascii_case("deny") => Action::Deny,
            Some(t) => {
                return Err(RuleParseError::Action {
                    token: t.to_owned(),
                });
            }
        };
        let mut next = |what| toks.next().ok_or(RuleParseError::Missing { what });
        let proto = parse_proto(next("protocol")?)?;
        let src = parse_addr(next("source address")?)?;
        let dst = parse_addr(next("destination address")?)?;

        let (mut sport, mut dport) = (None, None);
        while let Some(t) = toks.next() {
            let (keyword, slot) = if t.eq_ignore_ascii_case("sport") {
                ("sport", &mut sport)
            } else if t.eq_ignore_ascii_case("dport") {
                ("dport", &mut dport)
            } else {
                return Err(RuleParseError::Unexpected {
                    token: t.to_owned(),
                });
            };
            if slot.is_some() {
                return Err(RuleParseError::Repeated {
                    token: keyword.to_owned(),
                });
            }
            let ports = toks.next().ok_or(RuleParseError::Missing {
                what: "port or port range",
            })?;
            *slot = Some((keyword, parse_ports(ports)?));
        }

        if let (Some(s), Some(d)) = (src, dst)
            && s.is_v4() != d.is_v4()
        {
            return Err(RuleParseError::MixedFamilies { src: s, dst: d });
        }
        for &(keyword, ref ports) in [&sport, &dport].into_iter().flatten() {
            if *ports != ALL_PORTS && !has_ports(proto) {
                return Err(RuleParseError::PortsWithoutPorts {
                    token: keyword,
                    proto: proto.map(proto_name).unwrap_or_default(),
                });
            }
        }
        Ok(Rule {
            action,
            proto,
            src,
            dst,
            src_ports: sport.map_or(ALL_PORTS, |(_, p)| p),
            dst_ports: dport.map_or(ALL_PORTS, |(_, p)| p),
        })
    }
}

fn proto_name(p: u8) -> String {
    PROTOCOLS
        .iter()
        .find(|&&(_, n)| n == p)
        .map_or_else(|| p.to_string(), |(name, _)| (*name).to_owned())
}

/// Writes the rule in the syntax `from_str` reads.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Permit => "permit",
            Action::Deny => "deny",
        };
        let proto = self.proto.map_or_else(|| "any".to_owned(), proto_name);
        let addr = |p: &Option<Prefix>| p.map_or_else(|| "any".to_owned(), |p| p.to_string());
        write!(
            f,
            "{action} {proto} {} {}",
            addr(&self.src),
            addr(&self.dst)
        )?;
        for (keyword, ports) in [("sport", &self.src_ports), ("dport", &self.dst_ports)] {
            if *ports == ALL_PORTS {
                continue;
            }
            if ports.start() == ports.end() {
                write!(f, " {keyword} {}", ports.start())?;
            } else {
                write!(f, " {keyword} {}-{}", ports.start(), ports.end())?;
            }
        }
        Ok(())
    }
}

/// An ordered rule list with the actions for packets no rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
    default: Action,
    non_ip: Action,
}

impl Acl {
    /// `rules` in match order; `default` for IP packets no rule matches. Frames without IP
    /// are permitted (see [`Acl::set_non_ip`]).
    pub fn new(rules: Vec<Rule>, default: Action) -> Self {
        Acl {
            rules,
            default,
            non_ip: Action::Permit,
        }
    }

    /// Sets the action for frames that are not IPv4 or IPv6 (ARP, other EtherTypes).
    pub fn set_non_ip(&mut self, action: Action) {
        self.non_ip = action;
    }

    pub fn push(&mut self, rule: Rule) {
        self.rules.push(rule);
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_action(&self) -> Action {
        self.default
    }

    pub fn non_ip_action(&self) -> Action {
        self.non_ip
    }

    /// The action of the first rule that matches, else the default.
    #[inline]
    pub fn evaluate(&self, hdr: &Headers) -> Action {
        match hdr.l3 {
            L3::Ipv4 { .. } | L3::Ipv6 { .. } => self
                .rules
                .iter()
                .find(|r| r.matches(hdr))
                .map_or(self.default, |r| r.action),
            L3::Arp | L3::Other => self.non_ip,
        }
    }
}

/// Lets through to `inner` only what the [`Acl`] permits.
#[derive(Debug, Clone)]
pub struct Filter<L> {
    acl: Acl,
    inner: L,
}

impl<L: Logic> Filter<L> {
    pub fn new(acl: Acl, inner: L) -> Self {
        Filter { acl, inner }
    }

    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    pub fn acl_mut(&mut self) -> &mut Acl {
        &mut self.acl
    }

    pub fn inner(&self) -> &L {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut L {
        &mut self.inner
    }

    pub fn into_inner(self) -> L {
        self.inner
    }
}

impl<L: Logic> Logic for Filter<L> {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        self.inner.prefetch(hdr)
    }

    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict {
        match self.acl.evaluate(hdr) {
            Action::Permit => self.inner.decide(pkt, hdr, in_port),
            Action::Deny => Verdict::Drop(DropReason::Filtered),
        }
    }

    fn tick(&mut self, now: Duration) {
        self.inner.tick(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's seed corpus holds valid rules, so fuzzing starts from real syntax.
    #[test]
    fn fuzz_seeds_parse_and_round_trip() {
        for seed in [
            include_str!("../../fuzz/seeds/acl_rule/deny_dns.txt"),
            include_str!("../../fuzz/seeds/acl_rule/permit_web.txt"),
            include_str!("../../fuzz/seeds/acl_rule/deny_v6.txt"),
            include_str!("../../fuzz/seeds/acl_rule/permit_all.txt"),
        ] {
            let rule: Rule = seed.parse().unwrap_or_else(|e| panic!("{seed}: {e}"));
            assert_eq!(rule.to_string().parse::<Rule>().unwrap(), rule, "{seed}");
        }
    }
    use crate::logic::StaticMap;
    use crate::logic::test_frames;
    use proptest::prelude::*;

    fn rule(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        s.parse::<Rule>().unwrap_err().to_string()
    }

    fn filter(rules: &[&str], default: Action) -> Filter<StaticMap> {
        let acl = Acl::new(rules.iter().map(|s| rule(s)).collect(), default);
        Filter::new(acl, StaticMap::from_pairs([(0, 1)]))
    }

    fn udp4(src: &str, dst: &str, dport: u16) -> (Vec<u8>, Headers) {
        test_frames::ipv4(src, dst, 64, 17, 40000, dport)
    }

    const PASS: Verdict = Verdict::Forward(1);
    const DENY: Verdict = Verdict::Drop(DropReason::Filtered);

    #[test]
    fn parses_the_example() {
        let r = rule("deny udp 10.0.0.0/8 any dport 53");
        assert_eq!(
            r,
            Rule {
                proto: Some(17),
                src: Some(Prefix::new("10.0.0.0".parse().unwrap(), 8).unwrap()),
                dst_ports: 53..=53,
                ..Rule::any(Action::Deny)
            }
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "deny udp 10.0.0.0/8 any dport 53",
            "permit tcp any 192.0.2.1/32 sport 1024-65535 dport 443",
            "permit any any any",
            "deny 47 2001:db8::/32 2001:db8:1::1/128",
            "permit icmpv6 fe80::/10 any",
            "deny sctp any any sport 9",
        ] {
            assert_eq!(rule(s).to_string(), s);
            assert_eq!(rule(&rule(s).to_string()), rule(s));
        }
        assert_eq!(
            rule("  PERMIT  TCP 192.0.2.1   any DPORT any ").to_string(),
            "permit tcp 192.0.2.1/32 any"
        );
    }

    #[test]
    fn errors_name_the_bad_token() {
        assert_eq!(
            err(""),
            "empty rule; expected `permit|deny <proto> <src> <dst> [sport <ports>] [dport <ports>]`"
        );
        assert_eq!(
            err("allow udp any any"),
            "`allow` is not an action; expected `permit` or `deny`"
        );
        assert!(err("deny udpp any any").starts_with("`udpp` is not a protocol"));
        assert!(err("deny 300 any any").starts_with("`300` is not a protocol"));
        assert!(err("deny udp 10.0.0/8 any").starts_with("`10.0.0/8` is not an address"));
        assert!(err("deny udp 10.0.0.0/x any").starts_with("`10.0.0.0/x` is not an address"));
        assert_eq!(
            err("deny udp 10.0.0.1/8 any"),
            "bad prefix `10.0.0.1/8`: prefix 10.0.0.1/8 has bits set past its length \
             (did you mean 10.0.0.0/8?)"
        );
        assert_eq!(
            err("deny udp 10.0.0.0/33 any"),
            "bad prefix `10.0.0.0/33`: prefix length 33 is longer than the 32-bit address"
        );
        assert!(err("deny udp any any dport 70000").starts_with("`70000` is not a port"));
        assert!(err("deny udp any any dport 9-1").starts_with("`9-1` is not a port"));
        assert_eq!(
            err("deny udp any"),
            "the rule ends where its destination address should be"
        );
        assert_eq!(
            err("deny udp any any dport"),
            "the rule ends where its port or port range should be"
        );
        assert_eq!(
            err("deny udp any any port 53"),
            "unexpected `port`; expected `sport <ports>` or `dport <ports>`"
        );
        assert_eq!(
            err("deny udp any any dport 53 dport 54"),
            "`dport` is given twice"
        );
        assert_eq!(
            err("deny any 10.0.0.0/8 2001:db8::/32"),
            "source 10.0.0.0/8 and destination 2001:db8::/32 are of different IP versions: \
             the rule could never match"
        );
        assert_eq!(
            err("deny icmp any any dport 53"),
            "`dport` needs a protocol with ports (tcp, udp, sctp or any), not `icmp`"
        );
    }

    #[test]
    fn first_match_wins_and_default_applies() {
        let mut f = filter(
            &[
                "permit udp 10.1.0.0/16 any dport 53",
                "deny udp 10.0.0.0/8 any dport 53",
                "deny tcp any 192.0.2.0/24 dport 1-1023",
            ],
            Action::Permit,
        );
        let (mut p, h) = udp4("10.1.2.3", "8.8.8.8", 53);
        assert_eq!(f.decide(&mut p, &h, 0), PASS);
        let (mut p, h) = udp4("10.2.2.3", "8.8.8.8", 53);
        assert_eq!(f.decide(&mut p, &h, 0), DENY);
        let (mut p, h) = udp4("10.2.2.3", "8.8.8.8", 54);
        assert_eq!(f.decide(&mut p, &h, 0), PASS, "default permit");
        let (mut p, h) = test_frames::ipv4("10.2.2.3", "192.0.2.9", 64, 6, 5555, 22);
        assert_eq!(f.decide(&mut p, &h, 0), DENY);
        let (mut p, h) = test_frames::ipv4("10.2.2.3", "192.0.2.9", 64, 6, 5555, 8080);
        assert_eq!(f.decide(&mut p, &h, 0), PASS);
        let (mut p, h) = test_frames::ipv4("10.2.2.3", "192.0.2.9", 64, 17, 5555, 22);
        assert_eq!(f.decide(&mut p, &h, 0), PASS, "udp is not tcp");
    }

    #[test]
    fn families_never_cross() {
        let mut f = filter(
            &["deny any 10.0.0.0/8 any", "deny any ::/0 any"],
            Action::Permit,
        );
        let (mut p, h) = test_frames::ipv6("2001:db8::1", "2001:db8::2", 64, 17, 1, 2);
        assert_eq!(
            f.decide(&mut p, &h, 0),
            DENY,
            "::/0 matches every v6 source"
        );
        let mut f = filter(&["deny any ::/0 any"], Action::Permit);
        let (mut p, h) = udp4("10.0.0.1", "10.0.0.2", 53);
        assert_eq!(
            f.decide(&mut p, &h, 0),
            PASS,
            "a v6 prefix never matches v4"
        );
        let mut f = filter(&["deny any 0.0.0.0/0 any"], Action::Permit);
        let (mut p, h) = test_frames::ipv6("2001:db8::1", "2001:db8::2", 64, 17, 1, 2);
        assert_eq!(
            f.decide(&mut p, &h, 0),
            PASS,
            "a v4 prefix never matches v6"
        );
        let mut f = filter(&["deny udp any 2001:db8::2 dport 2"], Action::Permit);
        assert_eq!(f.decide(&mut p, &h, 0), DENY);
    }

    #[test]
    fn portless_packets_do_not_match_port_conditions() {
        let mut f = filter(&["deny any any any dport 0-10"], Action::Permit);
        let (mut p, mut h) = test_frames::ipv4("10.0.0.1", "10.0.0.2", 64, 1, 0, 0);
        h.src_port = 0;
        h.dst_port = 0;
        assert_eq!(
            f.decide(&mut p, &h, 0),
            DENY,
            "explicit 0 is a port like any other"
        );
        let mut f = filter(&["deny any any any dport 53"], Action::Permit);
        assert_eq!(f.decide(&mut p, &h, 0), PASS);
    }

    #[test]
    fn non_ip_gets_its_own_action() {
        let mut f = filter(&["deny any any any"], Action::Deny);
        let (mut p, h) = test_frames::arp();
        assert_eq!(f.decide(&mut p, &h, 0), PASS, "ARP passes a deny-all list");
        f.acl_mut().set_non_ip(Action::Deny);
        assert_eq!(f.decide(&mut p, &h, 0), DENY);
        let (mut p, h) = udp4("10.0.0.1", "10.0.0.2", 53);
        assert_eq!(f.decide(&mut p, &h, 0), DENY);
        let f = filter(&[], Action::Permit);
        assert_eq!(f.acl().evaluate(&h), Action::Permit);
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Rule>();
        }

        #[test]
        fn parser_never_panics_on_rule_like_input(
            words in proptest::collection::vec(
                "(permit|deny|any|tcp|udp|sport|dport|[0-9]{1,6}(-[0-9]{1,6})?|[0-9.:/a-f]{1,20})",
                0..9,
            )
        ) {
            let s = words.join(" ");
            if let Ok(r) = s.parse::<Rule>() {
                prop_assert_eq!(r.to_string().parse::<Rule>(), Ok(r));
            }
        }
    }
}
