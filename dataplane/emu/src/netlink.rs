//! Configuring interfaces, addresses and routes through rtnetlink, in batches: requests are
//! queued with a description, sent together in as few `send`s as the socket takes, and every
//! acknowledgement is read back; a refusal names the request it answers. One [`Netlink`] is
//! bound to the network namespace of the thread that opened it.
//!
//! Messages are built with `netlink-packet-route` (the kernel's uapi layouts as types);
//! this module only batches them.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::io;
use std::net::{IpAddr, Ipv4Addr};

/// A next hop of a route this module installs: through `via` on interface `ifindex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    pub ifindex: u32,
    pub gateway: Ipv4Addr,
    pub weight: u32,
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
    /// Requests queued: (sequence number, bytes, description).
    queued: Vec<(u32, Vec<u8>, String)>,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Room for the acknowledgements of a large batch.
        let _ = socket.set_rx_buf_sz(4 << 20);
        let _ = socket.set_ext_ack(true);
        Ok(Netlink {
            socket,
            seq: 0,
            queued: Vec::new(),
        })
    }

    fn queue(&mut self, msg: RouteNetlinkMessage, flags: u16, what: String) {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.queued.push((self.seq, buf, what));
    }

    /// Gives interface `index` no IPv6 link-local address (address generation mode `none`),
    /// so it sends no neighbour discovery: queued before the interface goes up. This is
    /// `disable_ipv6` without a sysctl write per namespace, whose /proc/sys lookups grow with
    /// the number of namespaces.
    pub fn no_ipv6(&mut self, index: u32, name: &str) {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.queue(
            RouteNetlinkMessage::SetLink(m),
            0,
            format!("turning IPv6 address generation off on {name}"),
        );
    }

    /// Sets interface `index` up, with `mac` and `mtu` when given.
    pub fn link_up(&mut self, index: u32, name: &str, mac: Option<[u8; 6]>, mtu: Option<u32>) {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.queue(
            RouteNetlinkMessage::SetLink(m),
            0,
            format!("setting {name} up"),
        );
    }

    /// Creates veth pair `name` (here, with `mac` and `mtu`, down) and `peer` (in the network
    /// namespace `peer_ns`, with `mtu`).
    pub fn add_veth(
        &mut self,
        name: &str,
        mac: [u8; 6],
        mtu: u32,
        peer: &str,
        peer_ns: std::os::fd::RawFd,
    ) {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.to_string()));
        p.attributes.push(LinkAttribute::Mtu(mtu));
        p.attributes.push(LinkAttribute::NetNsFd(peer_ns));
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        m.attributes.push(LinkAttribute::Mtu(mtu));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.queue(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("creating veth pair {name} and {peer}"),
        );
    }

    /// Adds `addr/len` to interface `index`.
    pub fn add_address(&mut self, index: u32, name: &str, addr: Ipv4Addr, len: u8) {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = len;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
        m.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        let bcast = Ipv4Addr::from(u32::from(addr) | (u32::MAX >> len));
        m.attributes.push(AddressAttribute::Broadcast(bcast));
        self.queue(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("adding {addr}/{len} to {name}"),
        );
    }

    /// Routes `prefix/len` (0.0.0.0/0: the default route) through `hops` (several: multipath).
    pub fn add_route(&mut self, prefix: Ipv4Addr, len: u8, hops: &[Via]) {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = len;
        m.header.table = 254;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        if len > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(prefix)));
        }
        match hops {
            [one] => {
                m.attributes
                    .push(RouteAttribute::Gateway(RouteAddress::Inet(one.gateway)));
                m.attributes.push(RouteAttribute::Oif(one.ifindex));
            }
            many => {
                let nh = many
                    .iter()
                    .map(|h| {
                        let mut n = RouteNextHop::default();
                        n.interface_index = h.ifindex;
                        // rtnh_hops is the weight minus one.
                        n.hops = h.weight.clamp(1, 256).saturating_sub(1) as u8;
                        n.attributes
                            .push(RouteAttribute::Gateway(RouteAddress::Inet(h.gateway)));
                        n
                    })
                    .collect();
                m.attributes.push(RouteAttribute::MultiPath(nh));
            }
        }
        self.queue(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            format!("adding the route to {prefix}/{len}"),
        );
    }

    /// Sends every queued request and reads every acknowledgement; the first refusal comes
    /// back naming its request (the rest were still applied or refused by the kernel).
    pub fn commit(&mut self) -> io::Result<()> {
        let queued = std::mem::take(&mut self.queued);
        if queued.is_empty() {
            return Ok(());
        }
        // Requests go out in chunks the socket's send buffer takes; acknowledgements are read
        // after each chunk so they never overflow the receive buffer.
        let mut first_error: Option<io::Error> = None;
        for chunk in queued.chunks(256) {
            let mut buf = Vec::with_capacity(chunk.iter().map(|q| q.1.len()).sum());
            for (_, bytes, _) in chunk {
                buf.extend_from_slice(bytes);
            }
            self.socket.send(&buf, 0)?;
            let mut pending: Vec<u32> = chunk.iter().map(|q| q.0).collect();
            let mut rx = vec![0u8; 64 << 10];
            while !pending.is_empty() {
                let n = self.socket.recv(&mut &mut rx[..], 0)?;
                let mut at = 0;
                while at < n {
                    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[at..n])
                        .map_err(|e| {
                            io::Error::other(format!("netlink: an answer we cannot read: {e}"))
                        })?;
                    let len = msg.header.length as usize;
                    let seq = msg.header.sequence_number;
                    if let NetlinkPayload::Error(e) = &msg.payload {
                        pending.retain(|&s| s != seq);
                        if let Some(code) = e.code
                            && first_error.is_none()
                        {
                            let what = chunk
                                .iter()
                                .find(|q| q.0 == seq)
                                .map_or("a request", |q| q.2.as_str());
                            let os = io::Error::from_raw_os_error(-code.get());
                            first_error = Some(io::Error::new(os.kind(), format!("{what}: {os}")));
                        }
                    }
                    if len == 0 {
                        break;
                    }
                    at += (len + 3) & !3;
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
