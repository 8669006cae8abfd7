//! Commands, processes and cleanup for the perf lab. The same patterns as the namespace lab
//! (`crate::lab`): every command is bounded in time, every wait gives way to Ctrl-C, and a
//! process-wide registry lets the signal handler and an `atexit` hook delete the namespaces of
//! a bench that did not get to clean up itself.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use super::PerfError;
// The helpers that do not depend on the error type or the cancellation hooks are the lab's.
pub(crate) use crate::lab::sys::{alive, describe, is_root, netns_pids, signal, tail};
use crate::lab::sys::{install_cleanup_hooks, need_tool_as, run_as, run_ok_as, spawn_error, SysError};

static CANCELLED: AtomicBool = AtomicBool::new(false);
/// Namespace lists of the benches of this process that are up, by prefix.
static ACTIVE: Mutex<Vec<(String, Vec<String>)>> = Mutex::new(Vec::new());
static HOOKS: Once = Once::new();

pub(crate) fn cancelled() -> bool {
    CANCELLED.load(Ordering::Relaxed)
}

pub(crate) fn check_cancelled() -> Result<(), PerfError> {
    if cancelled() {
        Err(PerfError::Interrupted)
    } else {
        Ok(())
    }
}

fn active() -> std::sync::MutexGuard<'static, Vec<(String, Vec<String>)>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn register(prefix: &str, namespaces: &[String]) {
    install_hooks();
    active().push((prefix.to_string(), namespaces.to_vec()));
}

pub(crate) fn unregister(prefix: &str) {
    active().retain(|(p, _)| p != prefix);
}

extern "C" fn teardown_at_exit() {
    let benches = std::mem::take(&mut *active());
    for (prefix, nss) in benches {
        eprintln!("vrouter bench e2e: deleting namespaces of {prefix} at exit");
        let _ = delete_namespaces(&nss);
    }
}

fn install_hooks() {
    HOOKS.call_once(|| {
        install_cleanup_hooks("vrouter bench e2e", &CANCELLED, || !active().is_empty(), teardown_at_exit)
    });
}

impl SysError for PerfError {
    fn io(what: String, err: std::io::Error) -> Self {
        PerfError::Io { what, err }
    }
    fn timeout(cmd: String, secs: f64) -> Self {
        PerfError::Timeout { cmd, secs }
    }
    fn interrupted() -> Self {
        PerfError::Interrupted
    }
    fn command(cmd: String, status: String, stderr: String) -> Self {
        PerfError::Command { cmd, status, stderr }
    }
    fn missing_tool(tool: String, hint: String) -> Self {
        PerfError::MissingTool { tool, hint }
    }
    fn cancelled() -> bool {
        cancelled()
    }
}

pub(crate) fn need_tool(prog: &str) -> Result<(), PerfError> {
    need_tool_as(prog)
}

/// Runs `cmd` to completion within `timeout`; cancellable runs stop on Ctrl-C.
pub(crate) fn run(cmd: &mut Command, timeout: Duration, cancellable: bool) -> Result<Output, PerfError> {
    run_as(cmd, timeout, cancellable)
}

/// Like [`run`], but a non-zero exit is an error carrying stderr.
pub(crate) fn run_ok(cmd: &mut Command, timeout: Duration, cancellable: bool) -> Result<Output, PerfError> {
    run_ok_as(cmd, timeout, cancellable)
}

/// `ip ARGS`, an error on non-zero exit.
pub(crate) fn ip(args: &[&str]) -> Result<Output, PerfError> {
    run_ok(Command::new("ip").args(args), Duration::from_secs(10), true)
}

/// A command inside a namespace, an error on non-zero exit; returns stdout.
pub(crate) fn ns_ok(ns: &str, args: &[&str], timeout: Duration) -> Result<String, PerfError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    let out = run_ok(&mut cmd, timeout, true)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command inside a namespace whose exit status the caller judges.
pub(crate) fn ns_status(ns: &str, args: &[&str], timeout: Duration) -> Result<ExitStatus, PerfError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    Ok(run(&mut cmd, timeout, true)?.status)
}

/// Starts a background command in a namespace, in its own process group (trafgen's workers
/// ignore SIGTERM sent to the parent: [`kill_group`] stops them all), output to `log`.
pub(crate) fn spawn_in(ns: &str, args: &[&str], log: &Path) -> Result<Child, PerfError> {
    use std::os::unix::process::CommandExt;
    let f =
        std::fs::File::create(log).map_err(|err| PerfError::Io { what: format!("creating {}", log.display()), err })?;
    let f2 = f.try_clone().map_err(|err| PerfError::Io { what: "dup log fd".into(), err })?;
    let mut cmd = Command::new("ip");
    // `ip netns exec` execs the command in place: the child's pid is the group id.
    cmd.args(["netns", "exec", ns]).args(args).stdin(Stdio::null()).stdout(f).stderr(f2).process_group(0);
    let what = describe(&cmd);
    cmd.spawn().map_err(|err| spawn_error::<PerfError>(&what, err))
}

/// SIGKILLs a process group started by [`spawn_in`] and reaps its leader.
pub(crate) fn kill_group(child: &mut Child) {
    // SAFETY: plain syscall on the group we created; the leader is not reaped yet, so the id
    // cannot have been reused.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.wait();
}

/// SIGTERM, then SIGKILL after `grace`; reaps.
pub(crate) fn stop(child: &mut Child, grace: Duration) {
    signal(child.id(), libc::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("vrouter bench e2e: pid {} ignored SIGTERM: SIGKILL", child.id());
    kill_group(child);
}

/// Sleeps in small steps, returning `Interrupted` on Ctrl-C.
pub(crate) fn sleep(d: Duration) -> Result<(), PerfError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_cancelled()?;
        std::thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

pub(crate) fn netns_list() -> Result<Vec<String>, PerfError> {
    let out = run_ok(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10), false)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
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
        signal(p, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for ns in &present {
        for p in netns_pids(ns) {
            signal(p, libc::SIGKILL);
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
