//! A real etcd for tests and benches: one member ([`Etcd`]) or a cluster ([`EtcdCluster`]),
//! each member on free loopback ports with its data in a fresh directory, killed and its
//! directory removed when the handle drops (also when a test panics).
//!
//! The binary is Debian's `etcd-server` (etcd 3.4; `scripts/dev.sh` installs it), found on
//! `PATH` or named by `ETCD_BIN`. Without it [`Etcd::start`] panics saying so: a test that
//! needs etcd never passes by skipping it.
//!
//! Ports: the OS picks them (a listener bound to port 0, closed just before etcd starts);
//! etcd may lose the race for a port to another process, so a start whose member exits
//! with "address already in use" is retried on new ports. Within one process, starts are
//! serialised until every member listens, so two tests never pick the same ports.
//!
//! Speed: a single member elects itself after one election timeout, so it runs with a
//! 10 ms heartbeat and 100 ms election timeout and answers in ~0.15 s. A cluster uses
//! 50 ms / 500 ms, loose enough for a loaded 2-core machine not to flap leaders.
//! (etcd 3.4 has no `--unsafe-no-fsync`; its flags are the 3.4 spellings.)

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a start waits for its members to answer before it panics with their logs.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts on fresh ports when a member lost its port to another process.
const PORT_ATTEMPTS: usize = 5;

/// Serialises port picking up to "every member listens" within this process.
static START_LOCK: Mutex<()> = Mutex::new(());
static SEQ: AtomicU64 = AtomicU64::new(0);

/// The etcd binary: `ETCD_BIN`, else `etcd` on `PATH`. Panics naming the package when absent.
pub fn etcd_binary() -> PathBuf {
    find_etcd(std::env::var_os("ETCD_BIN"), std::env::var_os("PATH")).unwrap_or_else(|e| panic!("{e}"))
}

fn find_etcd(etcd_bin: Option<std::ffi::OsString>, path: Option<std::ffi::OsString>) -> Result<PathBuf, String> {
    const INSTALL: &str =
        "install Debian's etcd-server package (scripts/dev.sh does) to run the tests that need a real etcd";
    if let Some(p) = etcd_bin {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("ETCD_BIN={} is not a file: {INSTALL}", p.display())) };
    }
    std::env::split_paths(&path.unwrap_or_default())
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("etcd not found on PATH (nor ETCD_BIN set): {INSTALL}"))
}

/// One etcd member: its ports, data directory and (while running) its process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// The member's data directory and log live under `dir`.
    dir: PathBuf,
    /// `--initial-cluster` (all members' peer URLs) and its token.
    initial_cluster: String,
    token: String,
    /// Single-member timing or cluster timing (see the module doc).
    heartbeat_ms: u32,
    election_ms: u32,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("etcd log {}: {e}", self.log_path().display()));
        let err = log.try_clone().expect("dup etcd log");
        let child = Command::new(etcd_binary())
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.join(format!("{}.etcd", self.name)))
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", &self.heartbeat_ms.to_string()])
            .args(["--election-timeout", &self.election_ms.to_string()])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", etcd_binary().display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `Some(log tail)` if the process has exited.
    fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(format!("exited with {status}; log:\n{}", self.log_tail()))
            }
            _ => None,
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn listens(&self) -> bool {
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.client_port)), Duration::from_millis(100))
            .is_ok()
    }

    /// etcd's `/health`: true once the member serves and the cluster has a leader.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.client_port)),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.contains("\"health\":\"true\"")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two distinct free loopback ports per member (all listeners held until every port is picked).
fn free_ports(n: usize) -> Vec<(u16, u16)> {
    let listeners: Vec<TcpListener> =
        (0..2 * n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("local_addr").port()).collect();
    ports.chunks(2).map(|p| (p[0], p[1])).collect()
}

/// A fresh directory under the system temp dir, unique to this process and call.
fn fresh_dir() -> PathBuf {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "vrouter-etcd-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Starts `n` members in `dir` and waits until all listen and the cluster has a leader.
fn start_members(n: usize, dir: &Path) -> Vec<Member> {
    let (heartbeat_ms, election_ms) = if n == 1 { (10, 100) } else { (50, 500) };
    let mut last_failure = String::new();
    for attempt in 0..PORT_ATTEMPTS {
        let guard = START_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let ports = free_ports(n);
        let token = format!("vrouter-test-{}", dir.file_name().and_then(|s| s.to_str()).unwrap_or("x"));
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| Member {
                name: format!("m{i}"),
                client_port,
                peer_port,
                dir: dir.to_path_buf(),
                initial_cluster: initial_cluster.clone(),
                token: token.clone(),
                heartbeat_ms,
                election_ms,
                child: None,
            })
            .collect();
        // A retry starts from empty data directories and logs.
        for m in &members {
            let _ = fs::remove_dir_all(dir.join(format!("{}.etcd", m.name)));
            let _ = fs::remove_file(m.log_path());
        }
        for m in &mut members {
            m.spawn();
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut listening = false;
        let mut failed = None;
        while Instant::now() < deadline {
            if let Some(f) = members.iter_mut().find_map(|m| m.exited().map(|e| format!("{}: {e}", m.name))) {
                failed = Some(f);
                break;
            }
            if !listening && members.iter().all(Member::listens) {
                listening = true;
            }
            if listening && members.iter().all(Member::healthy) {
                return members;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(guard);
        match failed {
            Some(f) if f.contains("address already in use") => {
                last_failure = f;
                continue;
            }
            Some(f) => panic!("etcd member failed to start (attempt {attempt}): {f}"),
            None => {
                let logs: Vec<String> = members.iter().map(|m| format!("{}:\n{}", m.name, m.log_tail())).collect();
                panic!("etcd did not become healthy within {START_TIMEOUT:?}; logs:\n{}", logs.join("\n"));
            }
        }
    }
    panic!("etcd could not get free ports in {PORT_ATTEMPTS} attempts; last failure: {last_failure}");
}

/// A single etcd member on free loopback ports; killed and its directory removed on drop.
pub struct Etcd {
    member: Member,
    dir: PathBuf,
}

impl Etcd {
    /// Starts etcd and waits until it serves (bounded: panics with its log after 20 s).
    pub fn start() -> Etcd {
        let dir = fresh_dir();
        let mut members = start_members(1, &dir);
        let member = members.pop().expect("one member");
        Etcd { member, dir }
    }

    /// The client URL, as `Store::connect` takes it.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.member.client_url()]
    }

    /// Kills the process (SIGKILL), keeping its data for [`Etcd::restart`].
    pub fn kill(&mut self) {
        self.member.kill();
    }

    /// Starts the killed member again on the same ports and data; waits until it serves.
    pub fn restart(&mut self) {
        self.member.kill();
        self.member.spawn();
        wait_until(&mut [&mut self.member], |m| m.healthy(), "restarted etcd to become healthy");
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.member.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// An etcd cluster of `n` members on loopback, for fault tests (kill and restart members).
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
}

impl EtcdCluster {
    /// Starts `n` members with a static `--initial-cluster` and waits until all serve and a
    /// leader is elected (bounded: panics with their logs after 20 s).
    pub fn start(n: usize) -> EtcdCluster {
        assert!(n >= 1, "an etcd cluster needs at least one member");
        let dir = fresh_dir();
        let members = start_members(n, &dir);
        EtcdCluster { members, dir }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url()
    }

    /// Kills member `i` (SIGKILL), keeping its data for [`EtcdCluster::restart`].
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Whether member `i`'s process runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Starts member `i` again on its ports and data, and waits until it listens (not for a
    /// leader: with the other members down there may be no quorum; see [`Self::wait_healthy`]).
    pub fn restart(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.kill();
        m.spawn();
        wait_until(&mut [m], |m| m.listens(), "restarted etcd member to listen");
    }

    /// Waits until every running member reports healthy (a leader elected, quorum up).
    pub fn wait_healthy(&mut self) {
        let mut running: Vec<&mut Member> = self.members.iter_mut().filter(|m| m.child.is_some()).collect();
        wait_until(&mut running, |m| m.healthy(), "etcd cluster to become healthy");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Polls `ok` on every member until all pass; panics with the logs after [`START_TIMEOUT`]
/// or when a member exits.
fn wait_until(members: &mut [&mut Member], ok: impl Fn(&Member) -> bool, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        for m in members.iter_mut() {
            if let Some(e) = m.exited() {
                panic!("waiting for {what}: member {} {e}", m.name);
            }
        }
        if members.iter().all(|m| ok(m)) {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = members.iter().map(|m| format!("{}:\n{}", m.name, m.log_tail())).collect();
            panic!("timed out after {START_TIMEOUT:?} waiting for {what}; logs:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_starts_serves_and_is_removed_on_drop() {
        let t = Instant::now();
        let etcd = Etcd::start();
        let started = t.elapsed();
        assert!(etcd.member.healthy());
        let dir = etcd.dir.clone();
        let port = etcd.member.client_port;
        assert!(dir.exists());
        drop(etcd);
        assert!(!dir.exists(), "data dir removed on drop");
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "etcd killed on drop");
        assert!(started < Duration::from_secs(5), "start took {started:?}");
    }

    #[test]
    fn a_missing_etcd_is_an_error_naming_the_package() {
        let e = find_etcd(None, Some("/nonexistent-dir".into())).unwrap_err();
        assert!(e.contains("etcd-server") && e.contains("not found on PATH"), "{e}");
        let e = find_etcd(Some("/nonexistent-dir/etcd".into()), None).unwrap_err();
        assert!(e.contains("ETCD_BIN=/nonexistent-dir/etcd") && e.contains("etcd-server"), "{e}");
        assert_eq!(find_etcd(None, Some("/nonexistent-dir:/usr/bin".into())), Ok(PathBuf::from("/usr/bin/etcd")));
    }

    #[test]
    fn cluster_survives_one_member_and_restarts_it() {
        let mut c = EtcdCluster::start(3);
        assert_eq!(c.endpoints().len(), 3);
        c.kill(1);
        assert!(!c.is_running(1));
        c.wait_healthy(); // two of three keep quorum
        c.restart(1);
        c.wait_healthy();
        assert!(c.members.iter().all(Member::healthy));
    }
}
