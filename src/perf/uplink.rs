//! `vrouter bench uplink`: the most this machine's AF_XDP can carry between two nodes, whatever
//! forwards behind it; the bound under `bench e2e`'s cross-node TCP ratios.
//!
//! Two namespaces joined by one veth pair, as two nodes' uplinks are joined in the lab (there
//! through a bridge, one more hop: this is the kinder case). On each end an AF_XDP socket is
//! bound the way vrouter binds its uplink (our own `port::afxdp`: native XDP, copy mode, since
//! veth has no zero-copy; multi-buffer above 3,826 bytes). One thread, pinned to the
//! generator's CPU, sends full-size frames as fast as the TX ring takes them; the other,
//! pinned to the forwarding CPU, receives and counts them. No pipeline, no TAP, no TCP
//! endpoint: both CPUs do nothing but move frames through AF_XDP. The receiving veth's NAPI
//! (its XDP program and the copy into the socket's UMEM) runs in one of two places, each
//! measured: veth's default, the softirq of whoever sends (here the sender's `sendto`, as in
//! the lab, where one node's transmit carries the frame through the bridge into the other
//! node's socket), or a NAPI thread pinned to the receiver's CPU (what `bench e2e`'s UDP
//! hairpin does). The better of the two is the ceiling. Beside it, in the same namespaces and alternating with it, one iperf3 TCP stream
//! over the same veth through the kernel (GSO and GRO on, client and server pinned the same
//! way): what the kernel carries on that wire.
//!
//! Frames per second times the TCP payload such a frame carries (the MTU less 52 bytes: IPv4,
//! TCP and its timestamp option) is the most TCP goodput a forwarder on AF_XDP could deliver
//! from one node to another here, before it reads a pod's TAP, runs a pipeline or leaves any
//! CPU to the pods. Over the kernel's figure it bounds `tcp1_remote_ratio`: the kernel's own
//! TCP lab path (forwarding on both nodes) is no faster than its TCP over one bare veth.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::topo::Namespaces;
use super::{sys, Spread};
use crate::lab::LabError;
use crate::port::afxdp::{self, BindMode, TxCopy, XdpMode, XskPort};

const TX_DEV: &str = "x0";
const RX_DEV: &str = "x1";
const TX_IP: &str = "192.168.77.1";
const RX_IP: &str = "192.168.77.2";
const TX_MAC: &str = "02:76:71:00:00:01";
const RX_MAC: &str = "02:76:71:00:00:02";
const IPERF_PORT: &str = "5299";
/// IPv4 (20), TCP (20) and its timestamp option (12): what a full frame carries besides TCP
/// payload.
const TCP_OVERHEAD: u16 = 52;
const BURST: usize = 64;

/// What to measure.
#[derive(Debug, Clone)]
pub struct UplinkOptions {
    /// Underlay MTUs (each also the veth's).
    pub mtus: Vec<u16>,
    pub seconds: f64,
    pub warmup: f64,
    pub reps: u32,
    pub gen_cpu: Option<usize>,
    pub fwd_cpu: Option<usize>,
}

impl Default for UplinkOptions {
    fn default() -> Self {
        UplinkOptions { mtus: vec![1500, 9000], seconds: 3.0, warmup: 1.0, reps: 3, gen_cpu: None, fwd_cpu: None }
    }
}

/// Where the receiving veth's NAPI runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Napi {
    /// veth's default: in the softirq of the CPU that sends.
    Softirq,
    /// Threaded NAPI, its thread pinned to the receiver's CPU.
    Threaded,
}

const NAPIS: [Napi; 2] = [Napi::Softirq, Napi::Threaded];

/// AF_XDP's figures with one NAPI placement, over the rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AfxdpFigures {
    pub napi: Napi,
    /// Frames received by the AF_XDP socket, millions per second.
    pub mpps: Spread,
    /// The same frames as TCP goodput (the MTU less 52 bytes of headers each), Gbit/s.
    pub tcp_equiv_gbps: Spread,
    /// Of the frames the sender got onto its ring, the fraction the receiver never counted
    /// (the veth's ring full, the fill ring empty: what the slower side could not take).
    pub lost: Spread,
}

/// One MTU's figures over the rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UplinkFigures {
    pub mtu: u16,
    /// One iperf3 stream through the kernel over the same veth, Gbit/s.
    pub kernel_tcp_gbps: Spread,
    pub afxdp: Vec<AfxdpFigures>,
    /// Per round, the better placement's TCP-equivalent figure over the kernel's.
    pub ceiling_ratio: Spread,
    /// The same for TCP inside IPIP (20 bytes less payload per frame): the bound of
    /// `tcp1_ipip_ratio`.
    pub ceiling_ratio_ipip: Spread,
}

/// Runs every round (kernel, then AF_XDP, per MTU) and deletes the namespaces on every path out.
pub fn run(opts: &UplinkOptions, progress: &mut dyn FnMut(&str)) -> Result<Vec<UplinkFigures>, LabError> {
    if opts.reps == 0 || !(opts.seconds >= 0.5 && opts.seconds <= 600.0) {
        return Err(LabError::BadOption(format!(
            "--reps {} --seconds {}: need at least one round of 0.5 to 600 s",
            opts.reps, opts.seconds
        )));
    }
    if let Some(&m) = opts.mtus.iter().find(|&&m| !crate::lab::topo::mtu_ok(m)) {
        return Err(LabError::BadOption(format!(
            "MTU {m}: veth's native XDP takes {}..={} in one buffer or {}..={} in several",
            vrouter_api::config::MIN_MTU + crate::lab::topo::IPIP_OVERHEAD,
            crate::lab::topo::MAX_SINGLE_BUFFER_MTU,
            afxdp::MAX_CHUNK_MTU + 1,
            crate::lab::topo::MAX_MTU
        )));
    }
    let (gen, fwd) = super::cpus(opts.gen_cpu, opts.fwd_cpu);
    super::check_cpus(gen, fwd)?;
    if !sys::is_root() {
        return Err(LabError::NotRoot { lab: "vrouter bench uplink", needs: "creates namespaces and AF_XDP sockets" });
    }
    sys::need_tool("iperf3")?;
    sys::need_tool("taskset")?;
    let pair = Pair::up()?;
    let mut rows: Vec<(u16, Vec<Round>)> = opts.mtus.iter().map(|&m| (m, vec![])).collect();
    for rep in 1..=opts.reps {
        for (mtu, got) in rows.iter_mut() {
            pair.set_mtu(*mtu)?;
            let kernel = pair.iperf(opts, gen, fwd)?;
            progress(&format!("uplink rep {rep}/{} mtu {mtu} kernel TCP: {kernel:.2} Gbit/s", opts.reps));
            let mut afxdp = [(0.0, 0.0); 2];
            for (napi, out) in NAPIS.iter().zip(afxdp.iter_mut()) {
                *out = pair.afxdp(opts, *mtu, gen, fwd, *napi)?;
                progress(&format!(
                    "uplink rep {rep}/{} mtu {mtu} AF_XDP, NAPI {napi:?}: {:.3} Mpps = {:.2} Gbit/s of TCP payload, {:.1} % lost",
                    opts.reps,
                    out.0 / 1e6,
                    tcp_equiv_gbps(out.0, *mtu),
                    out.1 * 100.0
                ));
            }
            got.push(Round { kernel_gbps: kernel, afxdp });
        }
    }
    let figures = rows.into_iter().map(|(mtu, got)| figures(mtu, &got)).collect();
    pair.down()?;
    Ok(figures)
}

/// Frames per second of `mtu`-sized packets as TCP goodput in Gbit/s.
pub fn tcp_equiv_gbps(fps: f64, mtu: u16) -> f64 {
    fps * f64::from(mtu.saturating_sub(TCP_OVERHEAD)) * 8.0 / 1e9
}

/// The same inside IPIP: an outer IPv4 header less payload per frame.
fn ipip_equiv_gbps(fps: f64, mtu: u16) -> f64 {
    tcp_equiv_gbps(fps, mtu.saturating_sub(crate::lab::topo::IPIP_OVERHEAD))
}

/// One round at one MTU.
#[derive(Debug, Clone, Copy)]
struct Round {
    kernel_gbps: f64,
    /// Per placement ([`NAPIS`]): AF_XDP frames received per second, and the fraction of those
    /// sent that were never received.
    afxdp: [(f64, f64); 2],
}

fn figures(mtu: u16, got: &[Round]) -> UplinkFigures {
    let col = |f: &dyn Fn(&Round) -> f64| Spread::of(&got.iter().map(f).collect::<Vec<_>>());
    let afxdp = NAPIS
        .iter()
        .enumerate()
        .map(|(i, &napi)| AfxdpFigures {
            napi,
            mpps: col(&|g| g.afxdp[i].0 / 1e6),
            tcp_equiv_gbps: col(&|g| tcp_equiv_gbps(g.afxdp[i].0, mtu)),
            lost: col(&|g| g.afxdp[i].1),
        })
        .collect();
    let best = |g: &Round| g.afxdp.iter().map(|a| a.0).fold(0.0, f64::max);
    UplinkFigures {
        mtu,
        kernel_tcp_gbps: col(&|g| g.kernel_gbps),
        afxdp,
        ceiling_ratio: col(&|g| super::ratio(tcp_equiv_gbps(best(g), mtu), g.kernel_gbps)),
        ceiling_ratio_ipip: col(&|g| super::ratio(ipip_equiv_gbps(best(g), mtu), g.kernel_gbps)),
    }
}

/// The table `vrouter bench uplink` prints.
pub fn table(figures: &[UplinkFigures], opts: &UplinkOptions) -> String {
    let mut s =
        String::from("mtu   path             Mpps (min-max)          lost   Gbit/s of TCP (min-max)   ceiling ratio\n");
    for f in figures {
        let k = &f.kernel_tcp_gbps;
        s += &format!(
            "{:<5} kernel TCP       {:>23}  {:>6}  {:>6.2} ({:.2}-{:.2})\n",
            f.mtu, "", "", k.median, k.min, k.max
        );
        for a in &f.afxdp {
            let (m, g) = (&a.mpps, &a.tcp_equiv_gbps);
            s += &format!(
                "{:<5} AF_XDP, {:<8} {:>6.3} ({:.3}-{:.3})  {:>5.1} %  {:>6.2} ({:.2}-{:.2})\n",
                f.mtu,
                format!("{:?}", a.napi).to_lowercase(),
                m.median,
                m.min,
                m.max,
                a.lost.median * 100.0,
                g.median,
                g.min,
                g.max
            );
        }
        for (what, c) in [("", &f.ceiling_ratio), (", IPIP", &f.ceiling_ratio_ipip)] {
            s += &format!(
                "{:<5} {:<73}{:.2} ({:.2}-{:.2})\n",
                f.mtu,
                format!("ceiling{what} (the better AF_XDP over the kernel)"),
                c.median,
                c.min,
                c.max
            );
        }
    }
    s += &format!(
        "{} rounds of {} s after {} s of warm-up, one veth pair. AF_XDP: copy mode, native XDP, sender and receiver each \
         a thread alone on its CPU; the receiving veth's NAPI in the sender's softirq (veth's default) or threaded on the \
         receiver's CPU. Kernel: one iperf3 stream, GSO/GRO on. Gbit/s of TCP for AF_XDP: frames/s x (MTU - 52) x 8, the \
         most TCP goodput a forwarder on AF_XDP could pass from node to node here (IPIP: MTU - 72); the ceiling ratios \
         bound bench e2e's tcp1_remote_ratio and tcp1_ipip_ratio at that MTU",
        opts.reps, opts.seconds, opts.warmup
    );
    s
}

/// The two namespaces and their veth; deleted on drop.
struct Pair {
    ns: Namespaces,
    a: String,
    b: String,
}

impl Pair {
    fn up() -> Result<Pair, LabError> {
        let ns = Namespaces::create(&["a", "b"])?;
        let p = Pair { a: ns.name(0), b: ns.name(1), ns };
        sys::ip(&[
            "-n", &p.a, "link", "add", TX_DEV, "address", TX_MAC, "type", "veth", "peer", "name", RX_DEV, "netns", &p.b,
        ])?;
        sys::ip(&["-n", &p.b, "link", "set", RX_DEV, "address", RX_MAC])?;
        for (ns, dev, ip) in [(&p.a, TX_DEV, TX_IP), (&p.b, RX_DEV, RX_IP)] {
            sys::ip(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev])?;
            sys::ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(p)
    }

    fn set_mtu(&self, mtu: u16) -> Result<(), LabError> {
        let m = mtu.to_string();
        sys::ip(&["-n", &self.a, "link", "set", TX_DEV, "mtu", &m])?;
        sys::ip(&["-n", &self.b, "link", "set", RX_DEV, "mtu", &m])?;
        Ok(())
    }

    /// One iperf3 stream a -> b through the kernel, Gbit/s.
    fn iperf(&self, opts: &UplinkOptions, gen: usize, fwd: usize) -> Result<f64, LabError> {
        let mut server = sys::spawn_in(&self.b, &["iperf3", "-s", "-1", "-p", IPERF_PORT], None)?;
        let result = (|| {
            if !sys::wait_listening(&self.b, false, IPERF_PORT.parse().unwrap_or(0), Duration::from_secs(5)) {
                return Err(LabError::BadOption("the iperf3 server did not listen within 5 s".into()));
            }
            let secs = opts.seconds.round().max(1.0) as u64;
            let omit = opts.warmup.ceil() as u64;
            let (t, o, pins) = (secs.to_string(), omit.to_string(), format!("{gen},{fwd}"));
            let args = ["iperf3", "-c", RX_IP, "-p", IPERF_PORT, "-t", &t, "-O", &o, "-J", "-A", &pins];
            let out = sys::exec_in(&self.a, &args, Duration::from_secs(secs + omit + 15));
            crate::lab::demo::parse_iperf_run(&String::from_utf8_lossy(&out.stdout)).map(|(bps, _)| bps / 1e9).map_err(
                |e| LabError::BadOption(format!("iperf3: {e} ({})", String::from_utf8_lossy(&out.stderr).trim())),
            )
        })();
        sys::kill_group(&mut server);
        result
    }

    /// AF_XDP from a to b with the receiving veth's NAPI placed as `napi`: frames per second
    /// received, and the fraction of those sent that were not received.
    fn afxdp(
        &self,
        opts: &UplinkOptions,
        mtu: u16,
        gen: usize,
        fwd: usize,
        napi: Napi,
    ) -> Result<(f64, f64), LabError> {
        let stop = AtomicBool::new(false);
        let (received, sent) = (AtomicU64::new(0), AtomicU64::new(0));
        let before = super::topo::napi_threads(RX_DEV);
        let frame = udp_frame(mtu);
        std::thread::scope(|s| {
            let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
            let r = ready_tx.clone();
            let (stop, received, sent) = (&stop, &received, &sent);
            let rx = s.spawn(move || side(&self.b, RX_DEV, mtu, fwd, r, stop, |p| receive(p, received)));
            let rx_up = ready.recv_timeout(Duration::from_secs(10)).unwrap_or(Err("no answer in 10 s".into()));
            let tx = rx_up.is_ok().then(|| {
                s.spawn(move || side(&self.a, TX_DEV, mtu, gen, ready_tx, stop, |p| transmit(p, &frame, sent)))
            });
            let result = rx_up
                .map_err(|e| format!("receiver on {RX_DEV}: {e}"))
                .and_then(|()| ready.recv_timeout(Duration::from_secs(10)).unwrap_or(Err("no answer in 10 s".into())))
                .and_then(|()| match napi {
                    Napi::Threaded => super::topo::pin_napi(&self.b, RX_DEV, &before, fwd),
                    // The device's NAPI is new with the program; say so anyway, in case a
                    // kernel keeps the setting across.
                    Napi::Softirq => {
                        let off = format!("echo 0 > /sys/class/net/{RX_DEV}/threaded");
                        sys::ns_ok(&self.b, &["sh", "-c", &off], Duration::from_secs(5))
                            .map(drop)
                            .map_err(|e| format!("turning threaded NAPI off on {RX_DEV}: {e}"))
                    }
                })
                .map_err(LabError::BadOption)
                .and_then(|()| {
                    sys::sleep(Duration::from_secs_f64(opts.warmup))?;
                    let (r0, s0, t0) = (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), Instant::now());
                    sys::sleep(Duration::from_secs_f64(opts.seconds))?;
                    let (r1, s1, t1) = (received.load(Ordering::Relaxed), sent.load(Ordering::Relaxed), Instant::now());
                    let (got, sent) = ((r1 - r0) as f64, (s1 - s0) as f64);
                    Ok((got / (t1 - t0).as_secs_f64(), if sent > 0.0 { (1.0 - got / sent).max(0.0) } else { 0.0 }))
                });
            stop.store(true, Ordering::Relaxed);
            let _ = rx.join();
            if let Some(tx) = tx {
                let _ = tx.join();
            }
            result
        })
    }

    fn down(self) -> Result<(), LabError> {
        self.ns.down()
    }
}

/// A thread that enters `ns`, pins itself to `cpu`, binds `dev`'s queue 0 as vrouter does, says
/// so on `ready`, and runs `body` until `stop`; the XDP program goes with the socket.
fn side(
    ns: &str,
    dev: &str,
    mtu: u16,
    cpu: usize,
    ready: mpsc::Sender<Result<(), String>>,
    stop: &AtomicBool,
    mut body: impl FnMut(&mut XskPort),
) {
    let port = enter(ns).and_then(|()| {
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
        XskPort::open(dev, 0, XdpMode::Native, BindMode::Copy, mtu, 0)
    });
    let mut port = match port {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        body(&mut port);
    }
    drop(port);
    afxdp::detach_xdp(dev);
}

/// Moves this thread (only) into network namespace `ns`.
fn enter(ns: &str) -> io::Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

fn receive(port: &mut XskPort, received: &AtomicU64) {
    let n = port.rx_burst(afxdp::MAX_BURST).len();
    port.finish_batch();
    if n == 0 {
        std::thread::yield_now();
    } else {
        received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn transmit(port: &mut XskPort, frame: &[u8], sent: &AtomicU64) {
    let mut n = 0;
    while n < BURST && port.tx_copy(frame) {
        n += 1;
    }
    let (dropped, _) = port.finish_batch();
    sent.fetch_add((n - dropped.min(n)) as u64, Ordering::Relaxed);
}

/// An Ethernet + IPv4 + UDP frame filling `mtu`, TX_DEV's address to RX_DEV's.
fn udp_frame(mtu: u16) -> Vec<u8> {
    let mac = |s: &str| s.parse::<vrouter_core::wire::MacAddr>().map(|m| m.0).unwrap_or_default();
    let payload = vec![0x5a; usize::from(mtu) - 28];
    let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().map(|a| a.octets()).unwrap_or_default();
    let builder =
        etherparse::PacketBuilder::ethernet2(mac(TX_MAC), mac(RX_MAC)).ipv4(ip(TX_IP), ip(RX_IP), 64).udp(9, 9);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, &payload).expect("a Vec takes any frame");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_fills_the_mtu_and_parses() {
        for mtu in [1500u16, 9000] {
            let f = udp_frame(mtu);
            assert_eq!(f.len(), usize::from(mtu) + 14);
            let p = etherparse::SlicedPacket::from_ethernet(&f).expect("parses");
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else { panic!("not IPv4") };
            assert_eq!(ip.header().total_len(), mtu);
        }
    }

    #[test]
    fn tcp_equivalent_counts_payload_only() {
        // 1 Mpps of 1500-byte packets carry 1448 bytes of TCP payload each.
        assert!((tcp_equiv_gbps(1e6, 1500) - 11.584).abs() < 1e-9);
        // The ceiling takes each round's better placement.
        let r = |kernel_gbps, a, b| Round { kernel_gbps, afxdp: [(a, 0.0), (b, 0.1)] };
        let f = figures(1500, &[r(20.0, 1e6, 0.2e6), r(10.0, 0.1e6, 0.5e6), r(12.0, 0.3e6, 1e6)]);
        assert_eq!(f.kernel_tcp_gbps.median, 12.0);
        assert!((f.ceiling_ratio.median - 11.584 / 20.0).abs() < 1e-9, "{:?}", f.ceiling_ratio);
        // Inside IPIP each frame carries 1428 bytes of TCP payload.
        assert!((f.ceiling_ratio_ipip.median - 11.424 / 20.0).abs() < 1e-9, "{:?}", f.ceiling_ratio_ipip);
        assert_eq!(f.afxdp[0].napi, Napi::Softirq);
        assert!((f.afxdp[0].mpps.median - 0.3).abs() < 1e-9);
        assert!((f.afxdp[1].lost.median - 0.1).abs() < 1e-9);
    }
}
