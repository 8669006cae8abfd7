//! The binary a container runtime runs (from `/opt/cni/bin` or its `cni_plugin_dirs`).

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    // VERSION may come with nothing on stdin; an unreadable stdin is an empty config (an error
    // for the commands that need one).
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let out = vrouter_cni::run(|k| std::env::var(k).ok(), &stdin, vrouter_cni::cluster::connect);
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(out.stdout.as_bytes());
    let _ = so.flush();
    ExitCode::from(out.exit)
}
