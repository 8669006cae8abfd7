//! Why a frame was dropped: one `Copy` value per reason, each with a stable name that tests,
//! the CLI and metrics use. Names never change once released; new reasons are appended.

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// A reason for dropping a frame. See [`DropReason::name`] for the stable names.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[$doc])* $variant, )*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$variant, )* ];
            /// Number of reasons (the size of a per-reason counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// The stable name, `layer/what`.
            pub const fn name(self) -> &'static str {
                match self { $( DropReason::$variant => $name, )* }
            }

            /// Looks a reason up by its stable name.
            pub fn from_name(name: &str) -> Option<DropReason> {
                Self::ALL.iter().copied().find(|r| r.name() == name)
            }
        }
    };
}

drop_reasons! {
    // --- L2 input ---
    /// Frame from a port the current snapshot does not know (a race with reconfiguration).
    UnknownPort => "port/unknown",
    /// Frame shorter than an Ethernet header.
    EthTruncated => "eth/truncated",
    /// Destination MAC is neither ours nor broadcast.
    EthNotForUs => "eth/not-for-us",
    /// Source MAC is multicast/broadcast (invalid per IEEE 802.3).
    EthBadSource => "eth/bad-source",
    /// 802.1Q/802.1ad tagged frame; we do not bridge VLANs.
    EthVlan => "eth/vlan",
    /// IPv4 sent to the link-layer broadcast address: never forwarded (RFC 1812 5.3.4).
    EthBroadcastIp => "eth/broadcast-ipv4",
    /// EtherType other than IPv4 or ARP.
    EthUnsupportedType => "eth/unsupported-ethertype",

    // --- ARP / neighbours ---
    /// ARP packet too short or not Ethernet/IPv4.
    ArpMalformed => "arp/malformed",
    /// ARP request for an address we do not answer for on that port.
    ArpNotForUs => "arp/not-for-us",
    /// ARP reply for an address we never asked about.
    ArpUnsolicited => "arp/unsolicited-reply",
    /// ARP opcode other than request or reply.
    ArpBadOpcode => "arp/bad-opcode",
    /// Next hop unresolved and its hold queue (or the global hold pool) is full.
    NeighHoldFull => "neigh/hold-queue-full",
    /// Held packet waited longer than the resolution timeout.
    NeighUnresolved => "neigh/unresolved",
    /// Neighbour table full; no room to start resolution.
    NeighTableFull => "neigh/table-full",
    /// The sender already has its quota of unresolved neighbours (`neigh.unresolved_per_source`);
    /// no entry created.
    NeighSourceLimit => "neigh/source-limit",

    // --- IPv4 input (RFC 1812 5.2.2) ---
    /// Fewer than 20 bytes after the Ethernet header.
    Ipv4Truncated => "ipv4/truncated",
    /// Version field is not 4.
    Ipv4BadVersion => "ipv4/bad-version",
    /// IHL below 5 or header longer than the frame.
    Ipv4BadIhl => "ipv4/bad-ihl",
    /// Total length below the header length or beyond the frame.
    Ipv4BadLength => "ipv4/bad-total-length",
    /// Header checksum mismatch.
    Ipv4BadChecksum => "ipv4/bad-checksum",
    /// Source is 0/8, 127/8, multicast, broadcast or class E.
    Ipv4MartianSource => "ipv4/martian-source",
    /// Destination is 0/8, 127/8 or class E (240/4 but broadcast).
    Ipv4MartianDest => "ipv4/martian-destination",
    /// Multicast or limited broadcast destination: we do not route these.
    Ipv4NoMulticast => "ipv4/multicast-destination",
    /// Options malformed (bad length, runs past the header).
    Ipv4BadOptions => "ipv4/bad-options",
    /// Source-route options (LSRR/SSRR): not honoured (RFC 1812 5.2.4.1 allows refusing).
    Ipv4SourceRoute => "ipv4/source-route",
    /// TTL expired in transit (an ICMP time exceeded is sent when allowed).
    Ipv4TtlExpired => "ipv4/ttl-expired",
    /// Fragment addressed to us: we do not reassemble.
    Ipv4FragmentToUs => "ipv4/fragment-to-router",

    /// First fragment (or whole packet) too short for its TCP/UDP/ICMP header (RFC 1858).
    L4Truncated => "ipv4/l4-truncated",

    // --- Local delivery ---
    /// Protocol for a local address with no punt port configured.
    LocalNoPunt => "local/no-punt-port",
    /// ICMP to a router address that is not an echo request.
    LocalIcmpOther => "local/icmp-not-echo",
    /// Malformed ICMP (truncated or bad checksum) addressed to us.
    IcmpMalformed => "icmp/malformed",

    // --- IPIP (RFC 2003) ---
    /// Outer source is not a known peer node (CVE-2020-10136).
    IpipUnknownPeer => "ipip/unknown-peer",
    /// Outer destination is not a tunnel endpoint address of ours.
    IpipNotOurEndpoint => "ipip/not-our-endpoint",
    /// Outer packet is a fragment: we do not reassemble tunnels.
    IpipOuterFragment => "ipip/outer-fragment",
    /// Inner packet is itself IPIP.
    IpipNested => "ipip/nested",
    /// Encapsulated packet sent by a pod.
    IpipFromPod => "ipip/from-pod",
    /// Inner packet failed IPv4 input checks (counted under this reason, plus the inner reason
    /// in the trace).
    IpipBadInner => "ipip/bad-inner",
    /// No headroom left to encapsulate.
    IpipNoHeadroom => "ipip/no-headroom",

    // --- Endpoints, policy ---
    /// Pod sent from an address that is not its own.
    SpoofedSource => "endpoint/spoofed-source",
    /// Frame from a pod port with no endpoint configured.
    UnknownEndpoint => "endpoint/unknown",
    /// Denied by a policy rule or by default-deny.
    PolicyDeny => "policy/deny",
    /// Connection tracking table full; a new connection could not be admitted.
    ConntrackFull => "policy/conntrack-full",
    /// A new connection refused because its pod already holds its share of the connection
    /// table (`conntrack.endpoint_share_percent`).
    ConntrackEndpointShare => "policy/conntrack-endpoint-share",

    // --- FIB / forwarding ---
    /// No route (an ICMP destination unreachable is sent when allowed).
    NoRoute => "fib/no-route",
    /// Route is a blackhole (e.g. the local pod block aggregate).
    Blackhole => "fib/blackhole",
    /// Route's next hop is unusable (stale index or empty ECMP group).
    BadNextHop => "fib/bad-next-hop",
    /// Too big for the egress MTU with DF set (ICMP fragmentation needed sent when allowed).
    FragNeeded => "mtu/fragmentation-needed",
    /// Needed fragmenting but no buffer was free.
    FragNoBuffer => "mtu/no-buffer",

    // --- Output ---
    /// The output port's TX queue was full.
    TxFull => "tx/full",
    /// The output port's link is down: the uplink without carrier (its peer or cable down),
    /// or a pod's TAP removed under us (deleted in the pod, its namespace destroyed).
    TxLinkDown => "tx/link-down",

    // --- Before the pipeline: the uplink's AF_XDP socket, as the kernel counts it ---
    /// The socket's RX ring was full: the worker did not keep up.
    XskRxRingFull => "uplink/rx-ring-full",
    /// Frames the kernel could not deliver to the socket for another reason, mostly an empty
    /// fill ring (no free buffer to copy into).
    XskRxDropped => "uplink/rx-dropped",
    /// A multi-buffer frame longer than vrouter's 16 KiB gather buffer (a device MTU far above
    /// `[uplink] mtu`), or with no buffer free: its chunks went back to the fill ring.
    XskRxTooBig => "uplink/rx-too-big",

    // --- The node's kernel (host port) ---
    /// IPv4 from the host port whose source is one of this node's pods' (in its pod block or a
    /// local pod's address): only the pods send from those.
    HostSpoofedSource => "host/spoofed-source",

    // --- FIB, appended ---
    /// The route is of type unreachable (ICMP net unreachable sent when allowed).
    RouteUnreachable => "fib/unreachable",
    /// The route is of type prohibit (ICMP administratively prohibited sent when allowed).
    RouteProhibited => "fib/prohibited",

    // --- Spoofing from the underlay, appended ---
    /// IPIP inner source is one of our addresses (node IP, pod gateway, extra addresses).
    IpipInnerSourceOurs => "ipip/inner-source-ours",
    /// IPIP inner source is martian (0/8, 127/8, multicast, broadcast, class E).
    IpipInnerSourceMartian => "ipip/inner-source-martian",
    /// IPIP inner source lies in this node's pod block (a local pod's address).
    IpipInnerSourceLocalPod => "ipip/inner-source-local-pod",
    /// IPIP inner source fails the reverse-path check: strict, not routed back through the
    /// peer that sent it (nor the peer itself); loose, no route at all.
    IpipInnerSourceRpf => "ipip/inner-source-rpf",
    /// A plain frame from the uplink whose source lies in this node's pod block.
    UplinkPodSource => "endpoint/pod-source-from-uplink",
    /// Outer header marked CE (congestion) around an inner packet that is not ECN-capable
    /// (RFC 6040 4.2: drop).
    IpipEcnCeNotEct => "ipip/ecn-ce-not-ect",
    /// ARP reply we did not ask for, beyond the rate passed on to the node's kernel.
    ArpPuntLimited => "arp/unsolicited-reply-limited",
    /// Non-echo IPv4 from the node's kernel to one of the router's own addresses (the pod
    /// gateway, say): nothing answers it but the kernel itself.
    HostToRouterAddress => "host/to-router-address",

    // --- Offloads (a TAP's virtio-net header), appended ---
    /// A frame from a TAP whose virtio-net header asks for what an IPv4 router cannot do
    /// (TCPv6 or UFO segmentation, GSO without a segment size).
    VnetBadHeader => "offload/bad-vnet-header",
    /// A GSO frame that cannot be cut: not TCP or UDP over IPv4, its headers cut short, or its
    /// GSO type not its protocol's.
    GsoBadFrame => "offload/gso-bad-frame",
    /// A GSO frame without DF whose segments exceed the egress MTU (nothing sends these).
    GsoTooBig => "mtu/gso-segment-too-big",

    // --- Between workers, appended ---
    /// A frame for the worker that owns its flow found that worker's handoff ring full (or no
    /// free handoff buffer): the owner is behind.
    HandoffFull => "handoff/full",
}

/// The IPv4 input checks' verdicts (wire knows nothing of counters), under their stable names.
impl From<crate::wire::ipv4::Ipv4Error> for DropReason {
    #[inline]
    fn from(e: crate::wire::ipv4::Ipv4Error) -> DropReason {
        use crate::wire::ipv4::Ipv4Error as E;
        match e {
            E::Truncated => DropReason::Ipv4Truncated,
            E::BadVersion => DropReason::Ipv4BadVersion,
            E::BadIhl => DropReason::Ipv4BadIhl,
            E::BadLength => DropReason::Ipv4BadLength,
            E::BadChecksum => DropReason::Ipv4BadChecksum,
            E::MartianSource => DropReason::Ipv4MartianSource,
            E::MartianDest => DropReason::Ipv4MartianDest,
            E::Multicast => DropReason::Ipv4NoMulticast,
            E::BadOptions => DropReason::Ipv4BadOptions,
            E::SourceRoute => DropReason::Ipv4SourceRoute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ipv4_input_errors_count_under_their_ipv4_names() {
        use crate::wire::ipv4::Ipv4Error as E;
        let names = [
            (E::Truncated, "ipv4/truncated"),
            (E::BadVersion, "ipv4/bad-version"),
            (E::BadIhl, "ipv4/bad-ihl"),
            (E::BadLength, "ipv4/bad-total-length"),
            (E::BadChecksum, "ipv4/bad-checksum"),
            (E::MartianSource, "ipv4/martian-source"),
            (E::MartianDest, "ipv4/martian-destination"),
            (E::Multicast, "ipv4/multicast-destination"),
            (E::BadOptions, "ipv4/bad-options"),
            (E::SourceRoute, "ipv4/source-route"),
        ];
        for (e, name) in names {
            assert_eq!(DropReason::from(e).name(), name, "{e:?}");
        }
    }
    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for r in DropReason::ALL {
            assert!(seen.insert(r.name()), "duplicate name {}", r.name());
            assert_eq!(DropReason::from_name(r.name()), Some(*r));
            assert!(r.name().contains('/'));
        }
        assert_eq!(DropReason::ALL.len(), DropReason::COUNT);
        assert_eq!(DropReason::from_name("no/such"), None);
    }

    #[test]
    fn discriminants_index_the_table() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
