//! `vrouter lab up|down|status|demo`: the subcommands, so that `main.rs` only forwards to
//! [`run_cli`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::{Backend, LabOptions};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab and start its daemons; print its prefix and leave it running.
    Up {
        #[command(flatten)]
        opts: LabArgs,
    },
    /// Stop a lab's daemons and delete its namespaces.
    Down {
        /// The lab's prefix; default: the only lab there is.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Namespaces, daemons and key counters of a lab.
    Status {
        /// The lab's prefix; default: the only lab there is.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Up, ping every pod pair and move TCP between them (iperf3), print a table, down.
    /// Exits non-zero if any pair failed.
    Demo {
        #[command(flatten)]
        opts: LabArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct LabArgs {
    /// Namespace prefix (default: vrl + 4 random hex digits).
    #[arg(long)]
    prefix: Option<String>,
    /// Linux forwarding instead of vrouter (a baseline; no IPIP).
    #[arg(long)]
    kernel: bool,
    /// Workers' idle mode in the daemons: poll, adaptive or interrupt.
    #[arg(long, default_value = "adaptive")]
    idle: String,
    /// The vrouter binary for the nodes (default: this one).
    #[arg(long)]
    vrouter: Option<PathBuf>,
    /// Wire the lab as a cluster: etcd, an agent per node, pods added through the CNI plugin
    /// with addresses from IPAM (needs etcd, and vrouterctl, vrouter-agent and vrouter-cni
    /// beside the vrouter binary).
    #[arg(long)]
    cluster: bool,
    /// Seconds the daemons get to come up.
    #[arg(long, default_value_t = 20)]
    ready_timeout: u64,
}

impl LabArgs {
    fn options(self) -> LabOptions {
        LabOptions {
            prefix: self.prefix,
            backend: if self.kernel { Backend::Kernel } else { Backend::Vrouter },
            idle: self.idle,
            vrouter: self.vrouter,
            ready_timeout: Duration::from_secs(self.ready_timeout),
            cluster: self.cluster,
            ..LabOptions::default()
        }
    }
}

/// Runs a lab subcommand; the text to print on success, or the message to print on failure.
pub fn run_cli(cmd: LabCommand) -> Result<String, String> {
    match cmd {
        LabCommand::Up { opts } => {
            let mut lab = super::up(&opts.options()).map_err(|e| e.to_string())?;
            lab.keep();
            Ok(format!(
                "{p}\nlab {p} is up (files in {d}); try `ip netns exec {p}-p1a ping 10.244.3.2`; `vrouter lab down --prefix {p}` removes it",
                p = lab.prefix(),
                d = lab.dir().display()
            ))
        }
        LabCommand::Down { prefix } => {
            super::down(prefix.as_deref()).map(|()| String::new()).map_err(|e| e.to_string())
        }
        LabCommand::Status { prefix } => super::status(prefix.as_deref()).map_err(|e| e.to_string()),
        LabCommand::Demo { opts } => {
            let report = super::demo(&opts.options()).map_err(|e| e.to_string())?;
            if report.ok() {
                Ok(report.to_string())
            } else {
                Err(report.to_string())
            }
        }
    }
}
