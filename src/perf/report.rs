//! The human-readable table and the SVG plot of an [`E2eReport`].

use std::fmt::Write as _;

use super::tcp::{cells, Offloads, TcpPath};
use super::{E2eReport, Forwarder, Ratio, Spread};

fn mm(s: &Spread, scale: f64, prec: usize) -> String {
    format!("{:.p$} ({:.p$}-{:.p$})", s.median * scale, s.min * scale, s.max * scale, p = prec)
}

fn verdict(r: &Ratio) -> &'static str {
    if r.converged {
        "yes"
    } else {
        "NO"
    }
}

/// One line per forwarder and frame size, medians with (min-max); the UDP ratios over the
/// rounds; the TCP tables (offloads on, then off); whether every ratio held still.
pub fn table(r: &E2eReport) -> String {
    let mut s = String::new();
    let o = &r.options;
    let mut runs = vec![];
    if o.udp {
        runs.push(format!("UDP {:.1} s", o.duration));
    }
    if o.tcp {
        runs.push(format!("TCP {:.0} s", o.tcp_duration.round().max(1.0)));
    }
    let _ = writeln!(
        s,
        "perf lab: {} to {} rounds (ran {}; a ratio has converged when its last two medians agree within {:.0} %); runs of {} after {:.1} s of warm-up; kernel {}; load average at start {}",
        o.reps,
        o.max_reps,
        r.rounds(),
        o.tolerance * 100.0,
        runs.join(", "),
        o.warmup,
        r.kernel,
        r.loadavg
    );
    if !r.summaries.is_empty() {
        udp_table(&mut s, r);
    }
    if !r.tcp.is_empty() {
        tcp_tables(&mut s, r);
    }
    if !r.latency.is_empty() {
        let _ = writeln!(s, "\nping RTT under load (us; 64-byte frames, both ways through the forwarder):");
        for l in &r.latency {
            let _ = writeln!(s, "  {l}");
        }
    }
    let moving: Vec<&str> = r.ratios.iter().filter(|(_, x)| !x.converged).map(|(k, _)| k.as_str()).collect();
    if moving.is_empty() {
        let _ = writeln!(
            s,
            "\nall {} ratios converged (last two medians within {:.0} %)",
            r.ratios.len(),
            o.tolerance * 100.0
        );
    } else {
        let _ = writeln!(
            s,
            "\nNOT converged within {} round(s) ({} of {} ratios; their last two medians differ by more than {:.0} %): {}",
            o.max_reps,
            moving.len(),
            r.ratios.len(),
            o.tolerance * 100.0,
            moving.join(", ")
        );
    }
    s
}

fn udp_table(s: &mut String, r: &E2eReport) {
    let _ = writeln!(s, "\nUDP through the hairpin; generator on CPU {}, forwarding on CPU {}", r.gen_cpu, r.fwd_cpu);
    let _ = writeln!(
        s,
        "{:<5} {:<8} {:>20} {:>22} {:>20} {:>8} {:>10} {:>10} {:>11} {:>6}",
        "size",
        "fwd",
        "offered Mpps",
        "forwarded Mpps",
        "Gbit/s",
        "loss %",
        "fwd CPU %",
        "Mpps/core",
        "vrouter %",
        "ratio"
    );
    for x in &r.summaries {
        let name = match x.forwarder {
            Forwarder::Kernel => None,
            Forwarder::Vrouter => Some(format!("ratio_{}", x.size)),
            Forwarder::Ipip => Some(format!("ratio_ipip_{}", x.size)),
        };
        let ratio = match name.and_then(|n| r.figures.get(&n)) {
            Some(v) => format!("{v:.2}"),
            None => "-".to_string(),
        };
        let size = if x.frame == x.size { x.size.to_string() } else { format!("{}*", x.size) };
        let _ = writeln!(
            s,
            "{:<5} {:<8} {:>20} {:>22} {:>20} {:>8.1} {:>10.0} {:>10.3} {:>11} {:>6}",
            size,
            x.forwarder.name(),
            mm(&x.offered_mpps, 1.0, 3),
            mm(&x.forwarded_mpps, 1.0, 3),
            mm(&x.gbps, 1.0, 2),
            x.loss.median * 100.0,
            x.fwd_cpu.median * 100.0,
            if x.fwd_cpu.median > 0.0 { x.forwarded_mpps.median / x.fwd_cpu.median } else { 0.0 },
            if x.forwarder == Forwarder::Kernel {
                "-".to_string()
            } else {
                format!("{:.0}", x.proc_cpu.median * 100.0)
            },
            ratio
        );
    }
    if r.summaries.iter().any(|x| x.frame != x.size) {
        let _ = writeln!(s, "* IPIP sends {}-byte frames so that the encapsulated frame fits the 1500-byte MTU", 1498);
    }
    let _ = writeln!(s, "ratios: median of the per-round ratios (min-max), rounds, converged");
    for (name, x) in r.ratios.iter().filter(|(k, _)| k.starts_with("ratio_")) {
        let _ = writeln!(
            s,
            "  {name:<16} {:.2} ({:.2}-{:.2})  {} rounds  {}",
            x.median,
            x.min,
            x.max,
            x.rounds,
            verdict(x)
        );
    }
}

fn tcp_tables(s: &mut String, r: &E2eReport) {
    let mut modes: Vec<Offloads> = r.tcp.iter().map(|t| t.offloads).collect();
    modes.sort_unstable();
    modes.dedup();
    let lab = r.tcp_lab.as_ref();
    for mode in modes {
        let seen = |fwd: &str| {
            lab.and_then(|l| l.pod_offloads.get(&format!("{fwd}/{}", mode.name()))).cloned().unwrap_or_default()
        };
        let _ = writeln!(
            s,
            "\niperf3 TCP pod to pod, offloads {}; the client pod's interface: kernel lab {}; vrouter lab {}",
            match mode {
                Offloads::On => "on, as the pods' interfaces come",
                Offloads::Off => "off (ethtool -K: tx, tso, gso, gro off in the pods)",
            },
            seen("kernel"),
            seen("vrouter")
        );
        let _ = writeln!(
            s,
            "{:<7} {:>3} {:>22} {:>22} {:>17} {:>20} {:>6} {:>5}  target (1 stream, offloads on)",
            "path", "str", "kernel Gbit/s", "vrouter Gbit/s", "CPU s/Gbit k / v", "ratio (min-max)", "rounds", "conv"
        );
        for cell in cells(&[mode]) {
            let of = |fwd: Forwarder| {
                r.tcp.iter().filter(move |t| {
                    t.forwarder == fwd && t.offloads == mode && t.path == cell.path && t.streams == cell.streams
                })
            };
            if of(Forwarder::Kernel).next().is_none() {
                continue;
            }
            let gbps = |fwd| Spread::of(&of(fwd).map(|t| t.gbps).collect::<Vec<_>>());
            let cpu = |fwd| {
                Spread::of(&of(fwd).filter(|t| t.ok && t.gbps > 0.0).map(|t| t.cpu_per_gbit).collect::<Vec<_>>()).median
            };
            let name = super::tcp::ratio_name(cell.streams, cell.path, mode);
            let (ratio, rounds, conv, median) = match r.ratios.get(&name) {
                Some(x) => {
                    (mm(&Spread { median: x.median, min: x.min, max: x.max }, 1.0, 2), x.rounds, verdict(x), x.median)
                }
                None => ("-".into(), 0, "-", 0.0),
            };
            let target = if cell.streams == 1 && mode == Offloads::On {
                let t = cell.path.target();
                let ceiling = r.uplink.as_ref().and_then(|u| match cell.path {
                    TcpPath::Remote => Some(u.ceiling_ratio.median),
                    TcpPath::Ipip => Some(u.ceiling_ratio_ipip.median),
                    TcpPath::Local => None,
                });
                let bound = ceiling.map(|c| format!(" (AF_XDP here: at most {c:.2})")).unwrap_or_default();
                format!(">= {t:.1}: {}{bound}", if median >= t { "met" } else { "NOT met" })
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "{:<7} {:>3} {:>22} {:>22} {:>17} {:>20} {:>6} {:>5}  {}",
                cell.path.name(),
                cell.streams,
                mm(&gbps(Forwarder::Kernel), 1.0, 2),
                mm(&gbps(Forwarder::Vrouter), 1.0, 2),
                format!("{:.3} / {:.3}", cpu(Forwarder::Kernel), cpu(Forwarder::Vrouter)),
                ratio,
                rounds,
                conv,
                target
            );
        }
    }
    if let Some(l) = lab {
        if r.tcp.iter().any(|t| t.path == TcpPath::Ipip) {
            let _ = writeln!(s, "ipip, kernel: {}", l.kernel_ipip_path);
        }
        let pins = match l.iperf3_cpus {
            Some((c, v)) => format!("iperf3 client on CPU {c}, server on CPU {v}"),
            None => "iperf3 not pinned".to_string(),
        };
        let _ = writeln!(
            s,
            "CPU s/Gbit: busy CPU seconds of the whole machine (not steal) per Gbit received; {pins}; labs {} (kernel) and {} (vrouter, idle = \"{}\"), underlay MTU {}",
            l.kernel_lab, l.vrouter_lab, l.idle, l.mtu
        );
    }
    if let Some(u) = &r.uplink {
        let best = u.afxdp.iter().map(|a| a.tcp_equiv_gbps.median).fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "AF_XDP here (bench uplink at MTU {}): full-size frames socket to socket over one veth carry at most {best:.2} Gbit/s of TCP against the kernel's {:.2} over it: no forwarder on AF_XDP reaches more than {:.2} across nodes ({:.2} over IPIP) on this machine",
            u.mtu, u.kernel_tcp_gbps.median, u.ceiling_ratio.median, u.ceiling_ratio_ipip.median
        );
    }
}

/// Forwarded Mpps by frame size, one bar per forwarder with a min-max whisker; hand-written SVG.
pub fn svg(r: &E2eReport) -> String {
    let (w, h) = (640.0, 400.0);
    let (left, right, top, bottom) = (60.0, 20.0, 40.0, 60.0);
    let sizes = &r.options.sizes;
    let fwds = [(Forwarder::Kernel, "#4c72b0"), (Forwarder::Vrouter, "#dd8452"), (Forwarder::Ipip, "#55a868")];
    let ymax = r.summaries.iter().map(|s| s.forwarded_mpps.max.max(s.offered_mpps.median)).fold(0.0f64, f64::max);
    let ymax = if ymax > 0.0 { nice_ceil(ymax) } else { 1.0 };
    let plot_h = h - top - bottom;
    let plot_w = w - left - right;
    let y = |v: f64| top + plot_h * (1.0 - v / ymax);
    let title = format!("Forwarded Mpps by frame size (median, min-max over {} reps)", r.options.reps);
    let mut s = svg_open(Frame { w, h, left, right, top, plot_h, ymax, prec: 2, unit: "Mpps" }, &title);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="33" text-anchor="middle" font-size="10">generator on CPU {}, forwarding on CPU {}; kernel {}</text>"#,
        w / 2.0,
        r.gen_cpu,
        r.fwd_cpu,
        r.kernel
    );
    let group_w = plot_w / sizes.len().max(1) as f64;
    let bar_w = group_w * 0.8 / fwds.len() as f64;
    for (gi, &size) in sizes.iter().enumerate() {
        let gx = left + group_w * gi as f64 + group_w * 0.1;
        for (fi, (fwd, color)) in fwds.iter().enumerate() {
            let Some(sm) = r.summaries.iter().find(|x| x.forwarder == *fwd && x.size == size) else { continue };
            let x = gx + bar_w * fi as f64;
            let m = sm.forwarded_mpps;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} {} B: {:.3} Mpps</title></rect>"#,
                y(m.median),
                bar_w * 0.9,
                (y(0.0) - y(m.median)).max(0.0),
                fwd.name(),
                size,
                m.median
            );
            let cx = x + bar_w * 0.45;
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#,
                y(m.min),
                y(m.max)
            );
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.2}</text>"#,
                y(m.max) - 4.0,
                m.median
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{size} B</text>"#,
            gx + group_w * 0.4,
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        y(0.0),
        w - right,
        y(0.0)
    );
    for (fi, (fwd, color)) in fwds.iter().enumerate() {
        let lx = left + 20.0 + 150.0 * fi as f64;
        let ly = h - 18.0;
        let _ = writeln!(s, r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{color}"/>"#, ly - 10.0);
        let label = match fwd {
            Forwarder::Kernel => "Linux forwarding",
            Forwarder::Vrouter => "vrouter (AF_XDP)",
            Forwarder::Ipip => "vrouter IPIP encap",
        };
        let _ = writeln!(s, r#"<text x="{}" y="{ly}">{label}</text>"#, lx + 16.0);
    }
    s.push_str("</svg>\n");
    s
}

/// A plot's frame: its size, margins, the plot's height and the top of the y axis.
pub(crate) struct Frame<'a> {
    pub w: f64,
    pub h: f64,
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub plot_h: f64,
    pub ymax: f64,
    /// Decimals of the y axis labels.
    pub prec: usize,
    /// The y axis' unit, turned up its side.
    pub unit: &'a str,
}

/// What every hand-written plot here starts with: the SVG element on white, the title, and
/// the y axis (six grid lines with their values, the unit up the side). Close with `</svg>`.
pub(crate) fn svg_open(f: Frame<'_>, title: &str) -> String {
    let Frame { w, h, left, right, top, plot_h, ymax, prec, unit } = f;
    let y = |v: f64| top + plot_h * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="18" text-anchor="middle" font-size="14">{title}</text>"#, w / 2.0);
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/>"##, w - right);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{v:.prec$}</text>"#, left - 6.0, yy + 4.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="15" y="{0:.1}" transform="rotate(-90 15 {0:.1})" text-anchor="middle">{unit}</text>"#,
        top + plot_h / 2.0
    );
    s
}

pub(crate) fn nice_ceil(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}
