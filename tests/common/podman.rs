//! A real container runtime calling CNI plugins: Debian's podman (4.3) with its CNI backend, as
//! docs/cni.md and the lab notes describe. Each [`Podman`] has its own containers.conf (given by
//! `CONTAINERS_CONF`, which podman's cleanup process that sends DEL inherits too), its own
//! network config and plugin directories; the busybox image is built once per test process
//! (`podman import` of a busybox-static rootfs, a tag unique to the process) and removed when the
//! last `Podman` goes. Containers have unique names and are removed (`rm -f -t0`) when their
//! handle drops, also when the test panics: containers and conmon outlive the test process
//! otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use super::text;

/// The image (its tag) and how many `Podman`s use it.
static IMAGE: Mutex<(usize, Option<String>)> = Mutex::new((0, None));

/// Where busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";

pub struct Podman {
    pub dir: PathBuf,
    /// The network config directory (`*.conflist`).
    pub net_dir: PathBuf,
    /// The first of `cni_plugin_dirs` (the plugins under test go there).
    pub plugin_dir: PathBuf,
    pub image: String,
    tag: String,
    seq: std::sync::atomic::AtomicU32,
}

impl Podman {
    /// A private podman set-up for the test tagged `tag` (unique among the tests of one binary).
    pub fn new(tag: &str) -> Podman {
        let tag = format!("{tag}{:04x}", std::process::id() & 0xffff);
        let dir = std::env::temp_dir().join(format!("{tag}-podman"));
        let (net_dir, plugin_dir) = (dir.join("net.d"), dir.join("bin"));
        std::fs::create_dir_all(&net_dir).unwrap();
        std::fs::create_dir_all(&plugin_dir).unwrap();
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\nnetwork_config_dir = \"{}\"\n",
            plugin_dir.display(),
            net_dir.display()
        );
        std::fs::write(dir.join("containers.conf"), conf).unwrap();
        let image = {
            let mut img = IMAGE.lock().unwrap_or_else(|e| e.into_inner());
            img.0 += 1;
            if img.1.is_none() {
                img.1 = Some(build_image(&dir));
            }
            img.1.clone().unwrap()
        };
        Podman { dir, net_dir, plugin_dir, image, tag, seq: Default::default() }
    }

    /// `podman` with this set-up's containers.conf.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"));
        c
    }

    pub fn run_cmd(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("podman runs")
    }

    /// Installs the plugin binary `bin` under its file name.
    pub fn install_plugin(&self, bin: &Path) {
        let to = self.plugin_dir.join(bin.file_name().unwrap());
        std::fs::copy(bin, &to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", bin.display(), to.display()));
    }

    /// Writes the network `name` (a conflist of `plugins`, each a JSON object).
    pub fn network(&self, name: &str, plugins: &[serde_json::Value]) {
        let conflist = serde_json::json!({ "cniVersion": "1.0.0", "name": name, "plugins": plugins });
        std::fs::write(self.net_dir.join(format!("{name}.conflist")), serde_json::to_vec_pretty(&conflist).unwrap())
            .unwrap();
    }

    /// A container name unique to this test: `<tag>-<what>-<n>`.
    pub fn name(&self, what: &str) -> String {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{what}-{n}", self.tag)
    }

    /// `podman run -d` of the image (running `sleep`) on `network`; the handle removes it.
    pub fn run(&self, what: &str, network: &str) -> Result<Container<'_>, String> {
        let name = self.name(what);
        let c = Container { podman: self, name: name.clone() };
        let o = self.run_cmd(&["run", "-d", "--name", &name, "--network", network, &self.image, "sleep", "3600"]);
        if !o.status.success() {
            return Err(text(&o)); // `c` drops: whatever podman left is removed
        }
        Ok(c)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let mut img = IMAGE.lock().unwrap_or_else(|e| e.into_inner());
        img.0 -= 1;
        if img.0 == 0 {
            if let Some(i) = img.1.take() {
                let _ = self.run_cmd(&["rmi", "-f", &i]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `localhost/vrouter-test-busybox:<pid>` from a rootfs of busybox-static and its applets.
fn build_image(scratch: &Path) -> String {
    assert!(Path::new(BUSYBOX).exists(), "{BUSYBOX} missing: apt-get install busybox-static");
    let root = scratch.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for d in ["proc", "sys", "dev", "etc", "tmp", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let applets = Command::new(BUSYBOX).arg("--list").output().unwrap();
    for a in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    let image = format!("localhost/vrouter-test-busybox:{}", std::process::id());
    let cmd = format!("tar -C {} -c . | podman import -q - {image}", root.display());
    let o =
        Command::new("sh").args(["-c", &cmd]).env("CONTAINERS_CONF", scratch.join("containers.conf")).output().unwrap();
    assert!(o.status.success(), "podman import: {}", text(&o));
    let _ = std::fs::remove_dir_all(&root);
    image
}

/// A container, removed (`podman rm -f -t0`) when dropped.
pub struct Container<'a> {
    podman: &'a Podman,
    pub name: String,
}

impl Container<'_> {
    /// `podman exec` of `args` in it.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.podman.run_cmd(&[&["exec", &self.name], args].concat())
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(o.status.success(), "podman exec {} {args:?}: {}", self.name, text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The IPv4 address of `dev` in the container.
    pub fn addr(&self, dev: &str) -> Option<String> {
        let out = self.exec_ok(&["ip", "-4", "-o", "addr", "show", "dev", dev]);
        out.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(|a| a.split('/').next().unwrap().to_string())
    }

    /// `podman rm -f -t0` now (DEL runs), checked.
    pub fn remove(self) {
        let o = self.podman.run_cmd(&["rm", "-f", "-t0", &self.name]);
        assert!(o.status.success(), "podman rm {}: {}", self.name, text(&o));
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run_cmd(&["rm", "-f", "-t0", &self.name]);
    }
}
