//! Owning the uplink's XDP hook: one vrouter per device, and the program kept attached.
//!
//! - [`UplinkLock`]: an exclusive `flock` on `/run/vrouter/uplink-net<N>-if<M>.lock`, taken
//!   before anything on the device is touched. The key is the network namespace's inode and the
//!   device's ifindex, not its name: `up0` in two namespaces is two devices, and a device
//!   renamed while a daemon runs is still the same one. The kernel drops the lock when its
//!   holder dies, so a killed daemon never blocks the next one. The file is never removed
//!   (removing a lock file races with a process about to lock it).
//! - [`XdpWatch`]: the program attached when the AF_XDP sockets were bound, held by fd so that
//!   it outlives a detach by someone else (`ip link set dev X xdp off`), and put back when the
//!   device's hook is found empty.
//! - [`XskProgram`]: our own XDP program for an uplink whose frames span several chunks
//!   (multi-buffer AF_XDP): libxdp's default program is not frags-aware, and the kernel
//!   refuses a device MTU above one page to any program that is not. One per device and mode
//!   in a process, shared by the device's sockets; a device is its namespace and its ifindex,
//!   as for the lock (`bench uplink` binds two devices of one ifindex from two namespaces).
//! - [`route_library_logs`]: libbpf's and libxdp's messages go through `tracing` (targets
//!   `libbpf` and `libxdp`) instead of straight to stderr.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// Where the per-device lock files live.
pub const LOCK_DIR: &str = "/run/vrouter";

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "uplink {dev} is already driven by another vrouter (pid {pid}, lock {path}); \
         stop that one first (one vrouter per uplink device), or choose another uplink"
    )]
    Taken { dev: String, pid: String, path: String },
    #[error("uplink {dev}: cannot take the device lock {path}: {source} (root needed; /run must be writable)")]
    Lock { dev: String, path: String, source: io::Error },
    #[error("uplink {dev}: {msg}")]
    Device { dev: String, msg: String },
}

/// The device's ifindex in the calling thread's network namespace (asked of the kernel, not
/// of /sys, which shows the namespace it was mounted in).
pub fn ifindex(dev: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(dev).map_err(io::Error::from)
}

/// The inode of the current network namespace: with the ifindex, names a device host-wide.
fn netns_inode() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// Exclusive ownership of one uplink device by this process, for as long as it lives.
#[derive(Debug)]
pub struct UplinkLock {
    _file: File,
    pub path: PathBuf,
}

impl UplinkLock {
    /// Takes the lock for `dev` in `dir` (normally [`LOCK_DIR`]), or says who holds it.
    pub fn acquire(dev: &str, dir: &Path) -> Result<UplinkLock, OwnerError> {
        let index = ifindex(dev).map_err(|e| OwnerError::Device {
            dev: dev.to_string(),
            msg: format!("no such device in this network namespace ({e})"),
        })?;
        let lock_err =
            |path: &Path, source| OwnerError::Lock { dev: dev.to_string(), path: path.display().to_string(), source };
        let ns = netns_inode().map_err(|e| lock_err(Path::new("/proc/thread-self/ns/net"), e))?;
        let path = dir.join(format!("uplink-net{ns}-if{index}.lock"));
        std::fs::create_dir_all(dir).map_err(|e| lock_err(dir, e))?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| lock_err(&path, e))?;
        // SAFETY: flock on a descriptor we own; no memory involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid =
                    holder.split_whitespace().find_map(|w| w.strip_prefix("pid=")).unwrap_or("unknown").to_string();
                return Err(OwnerError::Taken { dev: dev.to_string(), pid, path: path.display().to_string() });
            }
            return Err(lock_err(&path, e));
        }
        let note = format!("pid={} dev={dev} ifindex={index} netns={ns}\n", std::process::id());
        let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(note.as_bytes()));
        written.map_err(|e| lock_err(&path, e))?;
        Ok(UplinkLock { _file: file, path })
    }
}

/// The XDP attach mode of a bound socket, as the kernel's flags say it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The id of the XDP program attached to `ifindex` in `mode` (0: none).
pub fn attached_prog(ifindex: u32, mode: AttachMode) -> io::Result<u32> {
    let mut id = 0u32;
    // SAFETY: `id` is a valid u32 for the call to write; the call only queries the device.
    let r = unsafe { libbpf_sys::bpf_xdp_query_id(ifindex as i32, mode.flags() as i32, &mut id) };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r));
    }
    Ok(id)
}

/// What [`XdpWatch::check`] found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum XdpCheck {
    /// Our program is attached.
    Attached,
    /// The hook was empty; our program is attached again.
    Reattached,
    /// The hook was empty and putting our program back failed (errno).
    ReattachFailed(i32),
    /// Another program took the hook (its id); left alone, since removing it is its owner's call.
    Replaced(u32),
}

/// The uplink's XDP program, held open so it can be put back.
pub struct XdpWatch {
    ifindex: u32,
    mode: AttachMode,
    prog_id: u32,
    prog: OwnedFd,
}

impl XdpWatch {
    /// Takes hold of the program now attached to `dev` in `mode` (call after binding the
    /// AF_XDP sockets, which attach it).
    pub fn new(dev: &str, mode: AttachMode) -> io::Result<XdpWatch> {
        let ifindex = ifindex(dev)?;
        let prog_id = attached_prog(ifindex, mode)?;
        if prog_id == 0 {
            return Err(io::Error::other(format!("no XDP program attached to {dev} in {mode:?} mode")));
        }
        // SAFETY: a plain syscall wrapper; the returned fd (if any) is ours.
        let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(prog_id) };
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(-fd));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(XdpWatch { ifindex, mode, prog_id, prog })
    }

    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// Looks at the hook and puts our program back if it is empty.
    pub fn check(&self) -> XdpCheck {
        match attached_prog(self.ifindex, self.mode) {
            Ok(id) if id == self.prog_id => XdpCheck::Attached,
            Ok(0) => {
                let flags = self.mode.flags() | libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST;
                // SAFETY: the fd is a valid BPF program fd we hold; no options struct.
                let r = unsafe {
                    libbpf_sys::bpf_xdp_attach(self.ifindex as i32, self.prog.as_raw_fd(), flags, std::ptr::null())
                };
                if r < 0 {
                    XdpCheck::ReattachFailed(-r)
                } else {
                    XdpCheck::Reattached
                }
            }
            Ok(other) => XdpCheck::Replaced(other),
            // The device is gone or the query failed: nothing to put back now.
            Err(e) => XdpCheck::ReattachFailed(e.raw_os_error().unwrap_or(0)),
        }
    }
}

/// The XDP program of a multi-buffer uplink: `bpf_redirect_map(&xsks, rx_queue_index,
/// XDP_PASS)`, as libxdp's default program does, but loaded with `BPF_F_XDP_HAS_FRAGS` so
/// that frames larger than a page reach the sockets (and the device may have such an MTU).
/// One per device and attach mode, shared by the queues' sockets of this process; detached
/// when the last socket lets go (and only if it is still the attached program).
pub struct XskProgram {
    /// The device: its namespace's inode and its ifindex there (a process whose threads work
    /// in several namespaces, as `bench uplink` does, has devices of the same ifindex).
    netns: u64,
    ifindex: u32,
    flags: u32,
    prog: OwnedFd,
    map: OwnedFd,
}

/// Queues an [`XskProgram`]'s map can hold.
const XSK_MAP_SLOTS: u32 = 64;

static XSK_PROGRAMS: Mutex<Vec<Weak<XskProgram>>> = Mutex::new(Vec::new());

fn bpf_insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> libbpf_sys::bpf_insn {
    // SAFETY: `bpf_insn` is plain data (integers and a bitfield byte); all zeroes is valid.
    let mut i: libbpf_sys::bpf_insn = unsafe { std::mem::zeroed() };
    i.code = code;
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i.off = off;
    i.imm = imm;
    i
}

impl XskProgram {
    /// The program on `dev` in `mode`: this process's, or a new one attached now (refused if
    /// the hook holds another program).
    pub fn shared(dev: &str, mode: AttachMode) -> io::Result<Arc<XskProgram>> {
        let (netns, ifindex) = (netns_inode()?, ifindex(dev)?);
        let mut all = XSK_PROGRAMS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        let mine = |p: &Arc<XskProgram>| p.netns == netns && p.ifindex == ifindex && p.flags == mode.flags();
        if let Some(p) = all.iter().filter_map(Weak::upgrade).find(mine) {
            return Ok(p);
        }
        // A program of ours whose last socket just closed may not be detached yet (its drop
        // runs after the last reference is gone): wait a little for the hook to empty.
        let mut tries = 0;
        let p = loop {
            match XskProgram::attach(dev, netns, ifindex, mode) {
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy && tries < 5 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break Arc::new(r?),
            }
        };
        all.push(Arc::downgrade(&p));
        Ok(p)
    }

    fn attach(dev: &str, netns: u64, ifindex: u32, mode: AttachMode) -> io::Result<XskProgram> {
        let e = |what: &str, r: i32| {
            let os = io::Error::from_raw_os_error(-r);
            io::Error::new(os.kind(), format!("{dev}: {what}: {os}"))
        };
        // SAFETY: plain syscall wrappers; no options struct; the fd returned is ours.
        let map = unsafe {
            libbpf_sys::bpf_map_create(
                libbpf_sys::BPF_MAP_TYPE_XSKMAP,
                std::ptr::null(),
                4,
                4,
                XSK_MAP_SLOTS,
                std::ptr::null(),
            )
        };
        if map < 0 {
            return Err(e("cannot create the XSK map", map));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let map = unsafe { OwnedFd::from_raw_fd(map) };
        const BPF_PSEUDO_MAP_FD: u8 = 1;
        const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
        const XDP_PASS: i32 = 2;
        const BPF_FUNC_REDIRECT_MAP: i32 = 51;
        let insns = [
            bpf_insn(0x61, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0), // r2 = ctx->rx_queue_index
            bpf_insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), // r1 = &xsks (64-bit load)
            bpf_insn(0, 0, 0, 0, 0),
            bpf_insn(0xb7, 3, 0, 0, XDP_PASS), // r3 = XDP_PASS (no socket: to the stack)
            bpf_insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP), // r0 = bpf_redirect_map(r1, r2, r3)
            bpf_insn(0x95, 0, 0, 0, 0),        // return r0
        ];
        // SAFETY: plain data; all zeroes is the "no options" value, `sz` set below.
        let mut opts: libbpf_sys::bpf_prog_load_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _;
        opts.prog_flags = libbpf_sys::BPF_F_XDP_HAS_FRAGS;
        // SAFETY: the names are NUL-terminated, `insns` outlives the call, `opts` is sized.
        let prog = unsafe {
            libbpf_sys::bpf_prog_load(
                libbpf_sys::BPF_PROG_TYPE_XDP,
                c"vrouter_xsk".as_ptr(),
                c"GPL".as_ptr(),
                insns.as_ptr(),
                insns.len() as _,
                &mut opts,
            )
        };
        if prog < 0 {
            return Err(e(
                "cannot load the multi-buffer XDP program (frags-aware XDP needs kernel 5.18 or later)",
                prog,
            ));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(prog) };
        let flags = mode.flags();
        // SAFETY: a valid program fd; no options struct.
        let r = unsafe {
            libbpf_sys::bpf_xdp_attach(
                ifindex as i32,
                prog.as_raw_fd(),
                flags | libbpf_sys::XDP_FLAGS_UPDATE_IF_NOEXIST,
                std::ptr::null(),
            )
        };
        if r < 0 {
            return Err(e(&format!("cannot attach the multi-buffer XDP program in {mode:?} mode"), r));
        }
        Ok(XskProgram { netns, ifindex, flags, prog, map })
    }

    /// Sends queue `queue`'s frames to the socket `xsk`.
    pub fn bind(&self, queue: u32, xsk: i32) -> io::Result<()> {
        if queue >= XSK_MAP_SLOTS {
            return Err(io::Error::other(format!("queue {queue}: the XSK map has {XSK_MAP_SLOTS} slots")));
        }
        // SAFETY: key and value are u32/i32 as the map was created (4 bytes each), alive for
        // the call.
        let r = unsafe {
            libbpf_sys::bpf_map_update_elem(
                self.map.as_raw_fd(),
                (&queue as *const u32).cast(),
                (&xsk as *const i32).cast(),
                0,
            )
        };
        if r < 0 {
            return Err(io::Error::other(format!(
                "queue {queue}: cannot add the socket to the XSK map: {}",
                io::Error::from_raw_os_error(-r)
            )));
        }
        Ok(())
    }
}

impl Drop for XskProgram {
    fn drop(&mut self) {
        // SAFETY: plain data; zeroes then `sz` is a valid options struct.
        let mut opts: libbpf_sys::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _;
        opts.old_prog_fd = self.prog.as_raw_fd();
        // Detach only our program: XDP_FLAGS_REPLACE with the old fd leaves another's alone,
        // and the ifindex is looked up in this thread's namespace: dropped from another, it
        // would name another device, so leave it (the program goes with its device).
        if netns_inode().ok() != Some(self.netns) {
            tracing::warn!(ifindex = self.ifindex, "XDP program dropped outside its device's namespace: left attached");
            return;
        }
        // SAFETY: a valid options struct; the fds are ours.
        let _ = unsafe {
            libbpf_sys::bpf_xdp_attach(self.ifindex as i32, -1, self.flags | libbpf_sys::XDP_FLAGS_REPLACE, &opts)
        };
    }
}

/// The driver behind `dev` (`veth`, `ixgbe`, ...), as `ethtool -i` says it.
pub fn driver(dev: &str) -> io::Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    if dev.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("{dev}: name too long")));
    }
    // SAFETY: all-zero bytes are a valid value of these plain C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = b as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a socket we close below; no memory involved.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is ours; the kernel fills `info`, which `ifr` points to and which outlives
    // the call.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: SIOCETHTOOL reads `ifr` and writes at most size_of::<DrvInfo>() into `info`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// When `dev` is a veth, the warning its operator needs: the peer's TX checksum offload hands
/// AF_XDP frames with partial checksums, which vrouter forwards as they are, and TCP dies.
/// Names the peer when it is in this namespace.
pub fn veth_warning(dev: &str) -> Option<String> {
    if driver(dev).ok()? != "veth" {
        return None;
    }
    let read = |p: String| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let iflink = read(format!("/sys/class/net/{dev}/iflink"));
    let peer = iflink.as_deref().and_then(|index| {
        std::fs::read_dir("/sys/class/net").ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name != dev && read(format!("/sys/class/net/{name}/ifindex")).as_deref() == Some(index)).then_some(name)
        })
    });
    let peer = peer.unwrap_or_else(|| format!("PEER (ifindex {} in its namespace)", iflink.as_deref().unwrap_or("?")));
    Some(format!(
        "uplink {dev} is a veth: unless its peer has TX checksum offload off, TCP through vrouter \
         fails (the peer hands AF_XDP partial checksums, which are forwarded as they are); \
         turn it off where the peer lives: `ethtool -K {peer} tx off`"
    ))
}

// ------------------------------------------------------------------ library logs

/// C's `vsnprintf`. The callbacks' `va_list` parameter is a pointer to the caller's list on
/// x86_64 (what bindgen generates there), and handing that pointer on is what C does.
mod cfmt {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn vsnprintf(buf: *mut c_char, n: usize, fmt: *const c_char, ap: *mut c_void) -> c_int;
    }
}

/// The formatted message in `buf` (up to its first NUL), without the trailing newline.
fn message(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim_end().to_string()
}

unsafe extern "C" fn libbpf_print(
    level: libbpf_sys::libbpf_print_level,
    fmt: *const std::ffi::c_char,
    ap: *mut libbpf_sys::__va_list_tag,
) -> std::ffi::c_int {
    let mut buf = [0u8; 1024];
    // SAFETY: libbpf hands us a format string and its arguments; vsnprintf writes at most
    // `buf.len()` bytes, NUL included.
    let n = unsafe { cfmt::vsnprintf(buf.as_mut_ptr().cast(), buf.len(), fmt, ap.cast()) };
    let msg = message(&buf);
    let msg = msg.strip_prefix("libbpf: ").unwrap_or(&msg);
    // libbpf's info level is chatty (each ELF section it skips): debug here.
    match level {
        libbpf_sys::LIBBPF_WARN => tracing::warn!(target: "libbpf", "{msg}"),
        _ => tracing::debug!(target: "libbpf", "{msg}"),
    }
    n
}

unsafe extern "C" fn libxdp_print(
    level: libxdp_sys::libxdp_print_level,
    fmt: *const std::ffi::c_char,
    ap: *mut libxdp_sys::__va_list_tag,
) -> std::ffi::c_int {
    let mut buf = [0u8; 1024];
    // SAFETY: as in `libbpf_print`.
    let n = unsafe { cfmt::vsnprintf(buf.as_mut_ptr().cast(), buf.len(), fmt, ap.cast()) };
    let msg = message(&buf);
    let msg = msg.strip_prefix("libxdp: ").unwrap_or(&msg);
    match level {
        libxdp_sys::libxdp_print_level_LIBXDP_WARN => tracing::warn!(target: "libxdp", "{msg}"),
        libxdp_sys::libxdp_print_level_LIBXDP_INFO => tracing::info!(target: "libxdp", "{msg}"),
        _ => tracing::debug!(target: "libxdp", "{msg}"),
    }
    n
}

/// Sends libbpf's and libxdp's messages to `tracing` (targets `libbpf`, `libxdp`; their
/// levels kept, except libbpf's info, which is debug here), so `--log-level` governs them
/// like ours.
pub fn route_library_logs() {
    // SAFETY: both setters store a function pointer; ours are valid for the whole program.
    unsafe {
        libbpf_sys::libbpf_set_print(Some(libbpf_print));
        libxdp_sys::libxdp_set_print(Some(libxdp_print));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(f: impl FnOnce()) -> String {
        let sink = Sink::default();
        let s2 = sink.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || s2.clone())
            .finish();
        tracing::subscriber::with_default(sub, f);
        let v = sink.0.lock().unwrap().clone();
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn libbpf_and_libxdp_messages_go_through_tracing() {
        route_library_logs();
        let out = logged(|| {
            let junk = [0u8; 64];
            // SAFETY: a readable buffer of the given length; no options.
            let obj =
                unsafe { libbpf_sys::bpf_object__open_mem(junk.as_ptr().cast(), junk.len() as u64, std::ptr::null()) };
            assert!(obj.is_null(), "64 zero bytes are not an ELF object");
            let path = c"/nonexistent/vrouter-test.o";
            // SAFETY: a NUL-terminated path; the result is checked and not used further.
            let prog =
                unsafe { libxdp_sys::xdp_program__open_file(path.as_ptr(), std::ptr::null(), std::ptr::null_mut()) };
            // SAFETY: libxdp's error-pointer convention: the result is an error code, not freed.
            assert!(unsafe { libxdp_sys::libxdp_get_error(prog.cast()) } != 0);
        });
        assert!(out.contains(" libbpf: "), "libbpf message not routed: {out:?}");
        assert!(out.contains(" libxdp: "), "libxdp message not routed: {out:?}");
    }

    #[test]
    fn a_second_lock_on_the_same_device_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("vr-lock-{}", std::process::id()));
        let first = UplinkLock::acquire("lo", &dir).unwrap();
        let text = std::fs::read_to_string(&first.path).unwrap();
        assert!(text.starts_with(&format!("pid={} dev=lo ", std::process::id())), "{text}");
        // flock locks belong to the open file, so a second open in this process conflicts too.
        let e = UplinkLock::acquire("lo", &dir).unwrap_err().to_string();
        assert!(
            e.contains("already driven by another vrouter") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        let again = UplinkLock::acquire("lo", &dir).unwrap();
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_veth_gets_the_checksum_warning() {
        // (The veth case is tests/node_daemon.rs: a_veth_uplink_is_warned_about_checksum_offload.)
        assert_eq!(veth_warning("lo"), None);
        assert_eq!(veth_warning("nosuchdev0"), None);
        assert!(driver("nosuchdev0").is_err());
    }

    #[test]
    fn a_missing_device_is_named() {
        let e = UplinkLock::acquire("nosuchdev0", &std::env::temp_dir()).unwrap_err().to_string();
        assert!(e.contains("nosuchdev0") && e.contains("no such device"), "{e}");
    }
}
