//! The human-readable table and the SVG plot of an [`E2eReport`].

use std::fmt::Write as _;

use super::{E2eReport, Forwarder, Spread};

fn mm(s: &Spread, scale: f64, prec: usize) -> String {
    format!("{:.p$} ({:.p$}-{:.p$})", s.median * scale, s.min * scale, s.max * scale, p = prec)
}

/// One line per forwarder and frame size, medians with (min-max), then TCP.
pub fn table(r: &E2eReport) -> String {
    let mut s = String::new();
    let o = &r.options;
    let _ = writeln!(
        s,
        "perf lab: {} reps x {:.1} s (warm-up {:.1} s), kernel {}; generator on CPU {}, forwarding on CPU {}",
        o.reps, o.duration, o.warmup, r.kernel, r.gen_cpu, r.fwd_cpu
    );
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
        let k = r.figures.get(&format!("kernel_mpps_{}", x.size)).copied().unwrap_or(0.0);
        let ratio = if x.forwarder == Forwarder::Kernel || k <= 0.0 {
            "-".to_string()
        } else {
            format!("{:.2}", x.forwarded_mpps.median / k)
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
    if !r.tcp.is_empty() {
        let _ = writeln!(s, "\niperf3 TCP (Gbit/s, median (min-max)):");
        for streams in [1u32, 8] {
            for fwd in [Forwarder::Kernel, Forwarder::Vrouter] {
                let v: Vec<f64> =
                    r.tcp.iter().filter(|t| t.forwarder == fwd && t.streams == streams).map(|t| t.gbps).collect();
                if v.is_empty() {
                    continue;
                }
                let c: Vec<f64> =
                    r.tcp.iter().filter(|t| t.forwarder == fwd && t.streams == streams).map(|t| t.fwd_cpu).collect();
                let _ = writeln!(
                    s,
                    "  {streams} stream(s) {:<8} {:>22}  fwd CPU {:.0} %",
                    fwd.name(),
                    mm(&Spread::of(&v), 1.0, 2),
                    Spread::of(&c).median * 100.0
                );
            }
            if let Some(x) = r.figures.get(&format!("ratio_tcp{streams}")) {
                let _ = writeln!(s, "  {streams} stream(s) ratio vrouter/kernel {x:.2}");
            }
        }
    }
    if !r.latency.is_empty() {
        let _ = writeln!(s, "\nping RTT under load (us; 64-byte frames, both ways through the forwarder):");
        for l in &r.latency {
            let _ = writeln!(s, "  {l}");
        }
    }
    s
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
