//! Running commands for the namespace lab and the perf lab (`crate::perf`): every child is
//! bounded in time, and every wait gives way to a Ctrl-C so that the interrupted run can tear
//! its namespaces down instead of leaving them. Errors are [`LabError`]s, for both labs.
//!
//! Labs (and perf benches) that are up and not kept are listed in a process-wide registry with
//! their teardown; the SIGINT/SIGTERM handler and an `atexit` hook run whatever is still
//! listed. Statics are never dropped, so this is what cleans a lab shared by the tests of one
//! test binary.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use nix::sys::signal::kill;
pub(crate) use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use super::LabError;

/// Set by the signal handler; long waits and cancellable commands return `Interrupted`.
static CANCELLED: AtomicBool = AtomicBool::new(false);
type Teardown = Box<dyn FnOnce() + Send>;
/// Labs of this process that are up and not kept, by prefix, with their teardown.
static ACTIVE: Mutex<BTreeMap<String, Teardown>> = Mutex::new(BTreeMap::new());
static HOOKS: Once = Once::new();

pub(crate) fn cancelled() -> bool {
    CANCELLED.load(Ordering::Relaxed)
}

pub(crate) fn check_cancelled() -> Result<(), LabError> {
    if cancelled() {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

fn active() -> std::sync::MutexGuard<'static, BTreeMap<String, Teardown>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lists (or updates) the lab `prefix` for `teardown` at exit or on a signal.
pub(crate) fn register(prefix: &str, teardown: impl FnOnce() + Send + 'static) {
    install_hooks();
    active().insert(prefix.to_string(), Box::new(teardown));
}

pub(crate) fn unregister(prefix: &str) {
    active().remove(prefix);
}

extern "C" fn teardown_at_exit() {
    let labs = std::mem::take(&mut *active());
    for (_, teardown) in labs {
        teardown();
    }
}

/// Makes the registered teardowns run at exit and on Ctrl-C. On Ctrl-C, `cancelled` is set
/// first, so that cancellable commands stop and the main thread unwinds through its own
/// cleanup (which unregisters), which it is given up to 10 s to finish.
fn install_hooks() {
    HOOKS.call_once(|| {
        // libc: nix has no atexit.
        // SAFETY: registers a plain `extern "C" fn()` with no captured state.
        unsafe {
            libc::atexit(teardown_at_exit);
        }
        // SIGINT, SIGTERM and SIGHUP (a closed terminal), handled on a thread of their own
        // (signal-hook, as the daemon uses).
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                // Exit-time cleanup still runs, and `vrouter lab down` cleans after a hard kill.
                eprintln!("vrouter: no Ctrl-C cleanup handler ({e}); exit-time cleanup still runs");
                return;
            }
        };
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                CANCELLED.store(true, Ordering::SeqCst);
                eprintln!("vrouter: interrupted, cleaning up");
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline && !active().is_empty() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                teardown_at_exit();
                std::process::exit(130);
            }
        });
    });
}

/// Looks a program up in PATH.
pub(crate) fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| p.is_file())
}

/// Fails with an install hint (the Debian package) if `prog` is not in PATH.
pub(crate) fn need_tool(prog: &str) -> Result<(), LabError> {
    if which(prog).is_some() {
        return Ok(());
    }
    let package = match prog {
        "ip" => "iproute2",
        "ping" => "iputils-ping",
        "sysctl" => "procps",
        "trafgen" => "netsniff-ng",
        "taskset" => "util-linux",
        other => other,
    };
    Err(LabError::MissingTool { tool: prog.to_string(), hint: format!("apt-get install {package}") })
}

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn failed_output(code: i32, msg: String) -> Output {
    use std::os::unix::process::ExitStatusExt;
    Output { status: ExitStatus::from_raw(code << 8), stdout: vec![], stderr: msg.into_bytes() }
}

/// Runs `cmd` to completion within `timeout`, capturing its output. A cancellable run kills the
/// child and returns `interrupted` on Ctrl-C; teardown runs are not cancellable.
pub(crate) fn run(cmd: &mut Command, timeout: Duration, cancellable: bool) -> Result<Output, LabError> {
    let what = describe(cmd);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|err| spawn_error(&what, err))?;
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(r) => return r.map_err(|err| LabError::Io { what: format!("waiting for `{what}`"), err }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let err = std::io::ErrorKind::Other.into();
                return Err(LabError::Io { what: format!("waiting for `{what}`"), err });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let interrupted = cancellable && cancelled();
        if interrupted || Instant::now() >= deadline {
            // The waiter thread has not reaped the child yet (we would have received its
            // result), so the pid is still ours.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(2));
            return Err(if interrupted {
                LabError::Interrupted
            } else {
                LabError::Timeout { cmd: what, secs: timeout.as_secs_f64() }
            });
        }
    }
}

/// A failed spawn: a missing program gets the install hint.
fn spawn_error(what: &str, err: std::io::Error) -> LabError {
    if err.kind() == std::io::ErrorKind::NotFound {
        let prog = what.split(' ').next().unwrap_or(what);
        if let Err(e) = need_tool(prog) {
            return e;
        }
    }
    LabError::Io { what: format!("starting `{what}`"), err }
}

/// Like [`run`], but a non-zero exit is an error carrying stderr.
pub(crate) fn run_ok(cmd: &mut Command, timeout: Duration, cancellable: bool) -> Result<Output, LabError> {
    let what = describe(cmd);
    let out = run(cmd, timeout, cancellable)?;
    if out.status.success() {
        Ok(out)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(LabError::Command { cmd: what, status: out.status.to_string(), stderr })
    }
}

/// `ip ARGS` (cancellable), an error on non-zero exit.
pub(crate) fn ip(args: &[&str]) -> Result<Output, LabError> {
    run_ok(Command::new("ip").args(args), Duration::from_secs(10), true)
}

/// A command inside a namespace, never an error: a failure to run shows as exit status 127 with
/// the reason on stderr (what tests want to assert on).
pub(crate) fn exec_in(ns: &str, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    match run(&mut cmd, timeout, true) {
        Ok(o) => o,
        Err(e) => failed_output(127, e.to_string()),
    }
}

/// A command inside a namespace, an error on non-zero exit; returns stdout.
pub(crate) fn ns_ok(ns: &str, args: &[&str], timeout: Duration) -> Result<String, LabError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    let out = run_ok(&mut cmd, timeout, true)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command inside a namespace whose exit status the caller judges.
pub(crate) fn ns_status(ns: &str, args: &[&str], timeout: Duration) -> Result<ExitStatus, LabError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    Ok(run(&mut cmd, timeout, true)?.status)
}

/// Waits until something in `ns` listens on `port` (TCP, or UDP when `udp`); whether it did
/// before `timeout` (or a cancel).
pub(crate) fn wait_listening(ns: &str, udp: bool, port: u16, timeout: Duration) -> bool {
    let flags = if udp { "-lunH" } else { "-ltnH" };
    let filter = format!("sport = :{port}");
    let end = Instant::now() + timeout;
    loop {
        let o = exec_in(ns, &["ss", flags, &filter], Duration::from_secs(10));
        if o.status.success() && !o.stdout.is_empty() {
            return true;
        }
        if Instant::now() >= end || cancelled() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a background command inside a namespace with its output to `log` (or discarded), in
/// its own process group so that a terminal's Ctrl-C reaches only us and we stop it in order,
/// and so that [`kill_group`] stops all of it (trafgen's workers ignore SIGTERM sent to the
/// parent). `ip netns exec` execs the command in place: the child's pid is the group id.
pub(crate) fn spawn_in(ns: &str, args: &[&str], log: Option<&Path>) -> Result<Child, LabError> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args).stdin(Stdio::null()).process_group(0);
    match log {
        Some(p) => {
            let f = std::fs::File::create(p)
                .map_err(|err| LabError::Io { what: format!("creating {}", p.display()), err })?;
            let f2 = f.try_clone().map_err(|err| LabError::Io { what: "dup log fd".into(), err })?;
            cmd.stdout(f).stderr(f2);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    let what = describe(&cmd);
    cmd.spawn().map_err(|err| spawn_error(&what, err))
}

/// SIGKILLs a process group started by [`spawn_in`] and reaps its leader.
pub(crate) fn kill_group(child: &mut Child) {
    // The group we created; the leader is not reaped yet, so the id cannot have been reused.
    let _ = nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

/// SIGTERM, then SIGKILL to its group after `grace`; reaps.
pub(crate) fn stop(child: &mut Child, grace: Duration) {
    signal(child.id(), Signal::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("vrouter: pid {} ignored SIGTERM: SIGKILL", child.id());
    kill_group(child);
}

/// Sleeps in small steps, returning `Interrupted` on Ctrl-C.
pub(crate) fn sleep(d: Duration) -> Result<(), LabError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_cancelled()?;
        std::thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

/// Whether `pid` is a live (not zombie) process; reaps it first if it is our exited child.
pub(crate) fn alive(pid: u32) -> bool {
    // WNOHANG never blocks; for a pid that is not our child it fails with ECHILD.
    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain spaces.
        Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Waits until none of `pids` is alive; past `timeout`, an error naming `what`.
pub(crate) fn wait_gone(pids: &[u32], timeout: Duration, what: &str) -> Result<(), LabError> {
    let end = Instant::now() + timeout;
    while pids.iter().any(|&p| alive(p)) {
        if Instant::now() >= end {
            return Err(LabError::Timeout { cmd: what.to_string(), secs: timeout.as_secs_f64() });
        }
        sleep(Duration::from_millis(10))?;
    }
    Ok(())
}

/// The command line of `pid`, NULs as spaces.
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?.read_to_string(&mut s).ok()?;
    Some(s.replace('\0', " "))
}

/// Sends `sig` to `pid`, ignoring failure (it may have exited); callers checked the pid
/// belongs to a lab process.
pub(crate) fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Names of the network namespaces (`ip netns list`, first word of each line).
pub(crate) fn netns_list() -> Result<Vec<String>, LabError> {
    let out = run_ok(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10), false)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// PIDs of the processes in a namespace (`ip netns pids`).
pub(crate) fn netns_pids(ns: &str) -> Vec<u32> {
    match run(Command::new("ip").args(["netns", "pids", ns]), Duration::from_secs(10), false) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect(),
        Err(_) => vec![],
    }
}

/// Stops whatever runs in the namespaces (SIGTERM first: a vrouter daemon detaches its XDP
/// program) and deletes them; returns the names that could not be deleted.
pub(crate) fn delete_namespaces(names: &[String]) -> Vec<String> {
    let present: Vec<String> = match netns_list() {
        Ok(l) => names.iter().filter(|n| l.contains(n)).cloned().collect(),
        Err(_) => names.to_vec(),
    };
    let pids: Vec<u32> = present.iter().flat_map(|ns| netns_pids(ns)).collect();
    for &p in &pids {
        signal(p, Signal::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for ns in &present {
        for p in netns_pids(ns) {
            signal(p, Signal::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut left = vec![];
    for ns in &present {
        if let Err(e) = run_ok(Command::new("ip").args(["netns", "del", ns]), Duration::from_secs(10), false) {
            left.push(format!("{ns} ({e})"));
        }
    }
    left
}

/// The last `n` lines of a file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(n);
            if lines.is_empty() {
                "(empty)".into()
            } else {
                lines[start..].join("\n")
            }
        }
        Err(e) => format!("(cannot read: {e})"),
    }
}
