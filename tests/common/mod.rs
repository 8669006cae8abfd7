//! What the daemon's namespace tests share (root only): a node, a peer router and pods in
//! network namespaces named after the test and the process, deleted on drop (even on panic);
//! the daemon run in the node's namespace; `vrouterctl` against its control socket.
//!
//! The usual topology ([`Topo::routed`]):
//!
//! ```text
//!  <p>-pod, <p>-a ...   TAP eth0 10.244.1.2, .3 ... (default via 169.254.1.1)
//!        |
//!  <p>-node             vrouter: pods' TAPs, host TAP vrhost 192.168.1.10/24, AF_XDP on up0
//!        | up0 (veth)
//!  <p>-peer             gw0 192.168.1.1/24, 10.244.1.0/26 via 192.168.1.10
//! ```

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod podman;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vrouter::control::config::{Config, ControlConfig, EndpointConfig, HostConfig};
use vrouter::control::fixtures;
use vrouter_core::wire::MacAddr;

/// `why` a test cannot run here, passed through only when `VROUTER_ALLOW_SKIP` is set by
/// someone who knows they are skipping it, and never under CI (`CI` set: CI runs as root with
/// every tool installed, and a test that did not run must not pass); otherwise a failure.
pub fn unless_allowed_to_skip(why: Option<String>) -> Option<String> {
    let why = why?;
    assert!(std::env::var_os("CI").is_none(), "cannot run under CI: {why}");
    assert!(
        std::env::var_os("VROUTER_ALLOW_SKIP").is_some(),
        "cannot run: {why} (set VROUTER_ALLOW_SKIP=1 to skip knowingly)"
    );
    Some(why)
}

/// Root, or a failure with the reason (see [`unless_allowed_to_skip`]); `false`: skip knowingly.
pub fn root_or_skip(what: &str) -> bool {
    unless_allowed_to_skip((!is_root()).then(|| format!("needs root ({what})"))).is_none()
}

/// Why a privileged test cannot run here (not root, or one of `tools` not on PATH), if it cannot.
pub fn cannot_run(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("not root".into());
    }
    tools
        .iter()
        .find(|t| !sh(&["sh", "-c", &format!("command -v {t} >/dev/null")]).status.success())
        .map(|t| format!("{t} not installed"))
}

/// [`cannot_run`], a failure unless skipping knowingly ([`unless_allowed_to_skip`]).
pub fn skip_unless_ready(tools: &[&str]) -> Option<String> {
    unless_allowed_to_skip(cannot_run(tools))
}

/// A cluster lab with `opts` (the vrouter binary under test and its tools beside it), or `None`
/// when the test may skip (see [`skip_unless_ready`]; `tools` are the programs it needs).
pub fn cluster_lab(tools: &[&str], opts: vrouter::lab::LabOptions) -> Option<vrouter::lab::LabHandle> {
    if let Some(why) = skip_unless_ready(tools) {
        eprintln!("SKIP: {why}");
        return None;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vrouter"));
    if let Err(e) = vrouter::lab::cluster::Tools::beside(&bin) {
        panic!("{e} (`cargo build --workspace` builds vrouterctl, vrouter-agent and vrouter-cni)");
    }
    let o = vrouter::lab::LabOptions { vrouter: Some(bin), cluster: true, ..opts };
    Some(vrouter::lab::up(&o).unwrap_or_else(|e| panic!("{e}")))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().expect("command runs")
}

pub fn ok(args: &[&str]) {
    let o = sh(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// stdout and stderr of a finished command, for messages and matching.
/// `vrouterctl` as the daemon's binary has it (`vrouter ctl`, the same code as the
/// `vrouterctl` binary of crates/vrouterctl, which that crate's own tests run).
pub fn vrouterctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vrouter"));
    c.arg("ctl");
    c
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Polls `cond` until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The static route to the peer router that most configs carry.
pub const DEFAULT_ROUTE: &str = "[[routes]]\nprefix = \"0.0.0.0/0\"\nvia = \"192.168.1.1\"\n";

/// A child process (the daemon, traffic); killed on drop if the test fails before it ends.
pub struct Proc(Option<Child>);

impl Proc {
    /// Takes charge of `child` (killed on drop unless waited for).
    pub fn new(child: Child) -> Proc {
        Proc(Some(child))
    }

    /// Its pid (`ip netns exec` execs the command, so the command's).
    pub fn pid(&self) -> i32 {
        self.0.as_ref().expect("not waited for").id() as i32
    }

    /// Sends `sig` (a pid we spawned and have not reaped).
    pub fn signal(&self, sig: Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    pub fn running(&mut self) -> bool {
        self.0.as_mut().expect("not waited for").try_wait().unwrap().is_none()
    }

    /// Waits for it to finish; its output.
    pub fn finish(mut self) -> Output {
        self.0.take().expect("not waited for").wait_with_output().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Namespaces `<p>-node`, `<p>-peer` and one per pod, deleted on drop (even on panic), and a
/// scratch directory for the config, log, stats and control socket.
pub struct Topo {
    pub p: String,
    pub dir: PathBuf,
    pods: Vec<String>,
}

impl Drop for Topo {
    fn drop(&mut self) {
        for n in ["node", "peer"].into_iter().chain(self.pods.iter().map(String::as_str)) {
            let _ = sh(&["ip", "netns", "del", &format!("{}-{n}", self.p)]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Topo {
    /// Namespaces `<tag><pid>-node`, `-peer` and `-<pod>` for each of `pods` (IPv6 off, lo up)
    /// and the uplink veth `up0` (node) <-> `gw0` (peer) with `queues` queues each way, both
    /// ends up. `tag` must be unique among the tests of one binary (they run in parallel).
    pub fn namespaces(tag: &str, queues: u32, pods: &[&str]) -> Topo {
        let p = format!("{tag}{:04x}", std::process::id() & 0xffff);
        let dir = std::env::temp_dir().join(format!("{p}-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Topo { p, dir, pods: pods.iter().map(|s| s.to_string()).collect() };
        for n in ["node", "peer"].iter().chain(pods) {
            ok(&["ip", "netns", "add", &t.ns(n)]);
            ok(&["ip", "netns", "exec", &t.ns(n), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ok(&["ip", "-n", &t.ns(n), "link", "set", "lo", "up"]);
        }
        let q = queues.to_string();
        let (node, peer) = (t.ns("node"), t.ns("peer"));
        #[rustfmt::skip]
        ok(&["ip", "link", "add", "up0", "netns", &node, "numrxqueues", &q, "numtxqueues", &q,
             "type", "veth", "peer", "name", "gw0", "netns", &peer, "numrxqueues", &q, "numtxqueues", &q]);
        ok(&["ip", "-n", &node, "link", "set", "up0", "up"]);
        ok(&["ip", "-n", &peer, "link", "set", "gw0", "up"]);
        t
    }

    /// The usual topology (module docs): the peer router is 192.168.1.1 and routes the pod
    /// block to the node; pods get addresses from 10.244.1.2 on, in the order given.
    pub fn routed(tag: &str, pods: &[&str]) -> Topo {
        let t = Topo::namespaces(tag, 1, pods);
        t.exec_ok("peer", &["ip", "addr", "add", "192.168.1.1/24", "dev", "gw0"]);
        t.exec_ok("peer", &["ip", "route", "add", "10.244.1.0/26", "via", "192.168.1.10"]);
        t
    }

    pub fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.p)
    }

    fn pod_index(&self, pod: &str) -> usize {
        self.pods.iter().position(|p| p == pod).unwrap_or_else(|| panic!("no pod {pod} in this topology"))
    }

    /// The address of pod `pod`: 10.244.1.2 for the first, .3 for the second ...
    pub fn pod_addr(&self, pod: &str) -> String {
        format!("10.244.1.{}", 2 + self.pod_index(pod))
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    /// The node's config for [`Topo::routed`]: node "t1" at 192.168.1.10 with the uplink, the
    /// host TAP `vrhost`, every pod (TAP `tap<name>` moved into its namespace), the control
    /// socket, then `extra` (routes, policies, kernel_routes ...).
    pub fn config(&self, extra: &str) -> String {
        let (node, mut uplink) = fixtures::node("t1");
        uplink.device = "up0".into();
        let control = ControlConfig { socket: self.sock().display().to_string(), group: None };
        let mut c = fixtures::table("node", &node)
            + &fixtures::table("uplink", &uplink)
            + &fixtures::table("host", &HostConfig { tap: "vrhost".into() })
            + &fixtures::table("control", &control);
        for (i, pod) in self.pods.iter().enumerate() {
            let host = 2 + i as u8;
            let e = EndpointConfig {
                netns: Some(self.ns(pod)),
                mac: MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, host]),
                addrs: vec![self.pod_addr(pod).parse().expect("pod address")],
                ..fixtures::endpoint(pod, host)
            };
            c += &fixtures::entry("endpoints", &e);
        }
        c + extra
    }

    /// `text` (a config) with `change` made to it, typed: parsed, changed, serialized.
    pub fn edit(&self, text: &str, change: impl FnOnce(&mut Config)) -> String {
        let mut c = Config::parse(text, &self.dir.join("edit.toml")).expect("config to edit");
        change(&mut c);
        toml::to_string(&c).expect("config serializes")
    }

    /// Writes `text` as the node's config file (what `start` runs and SIGHUP re-reads).
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.dir.join("node.toml"), text).unwrap();
    }

    /// Starts the daemon in the node namespace and waits until it serves (it writes the stats
    /// file once the ports, the control socket and the route import are up).
    pub fn start(&self) -> Proc {
        let _ = std::fs::remove_file(self.dir.join("stats.json"));
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("node"), env!("CARGO_BIN_EXE_vrouter"), "run", "--config"])
            .arg(self.dir.join("node.toml"))
            .arg("--stats")
            .arg(self.dir.join("stats.json"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        let daemon = Proc(Some(child));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.dir.join("stats.json").exists() {
            assert!(Instant::now() < deadline, "daemon did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    /// Runs the daemon in the node namespace in the foreground, for a config it should refuse
    /// at start: what it printed and how it exited. One it accepts is stopped after 10 s (exit
    /// status 124), so the test fails instead of hanging.
    pub fn run_refused(&self) -> Output {
        let config = self.dir.join("node.toml");
        let vrouter = env!("CARGO_BIN_EXE_vrouter");
        let ns = self.ns("node");
        sh(&["ip", "netns", "exec", &ns, "timeout", "10", vrouter, "run", "--config", config.to_str().unwrap()])
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn stats(&self) -> serde_json::Value {
        std::thread::sleep(Duration::from_millis(500)); // one refresh
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("stats.json")).unwrap()).unwrap()
    }

    /// Runs `args` in namespace `<p>-<n>`.
    pub fn exec(&self, n: &str, args: &[&str]) -> Output {
        sh(&[&["ip", "netns", "exec", &self.ns(n)], args].concat())
    }

    /// Runs `args` in namespace `<p>-<n>`; it must succeed.
    pub fn exec_ok(&self, n: &str, args: &[&str]) {
        let o = self.exec(n, args);
        assert!(o.status.success(), "in {}: {args:?}: {}", self.ns(n), text(&o));
    }

    /// Starts `args` in namespace `<p>-<n>`. Its output goes to pipes read only by
    /// [`Proc::finish`], so a long-running command must print little (`ping -q`).
    pub fn spawn(&self, n: &str, args: &[&str]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(n)])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Proc(Some(child))
    }

    pub fn ping(&self, from: &str, to: &str, count: &str) -> bool {
        self.exec(from, &["ping", "-c", count, "-i", "0.2", "-W", "1", to]).status.success()
    }

    /// `vrouterctl -s <socket> ARGS` (its exit status and output are the caller's to check).
    pub fn ctl(&self, args: &[&str]) -> Output {
        vrouterctl().arg("-s").arg(self.sock()).args(args).output().unwrap()
    }

    /// `vrouterctl --json ARGS`, which must succeed; its reply.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let o = self.ctl(&[&["--json"], args].concat());
        assert!(o.status.success(), "vrouterctl {args:?}: {}\n{}", text(&o), self.log());
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("vrouterctl {args:?}: {e}: {}", text(&o)))
    }

    pub fn stop(&self, mut daemon: Proc) {
        daemon.signal(Signal::SIGTERM);
        let child = daemon.0.as_mut().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                daemon.0 = None;
                assert!(st.success(), "daemon exit status {st}: {}", self.log());
                break;
            }
            assert!(Instant::now() < deadline, "daemon did not stop: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
