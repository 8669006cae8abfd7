//! The agent as confd: the node's BGP intent (computed from the view) rendered into BIRD's
//! configuration file and reloaded through BIRD's control socket when it changed, never a
//! restart. BIRD itself is started by whoever runs the node (a service manager, the lab); until
//! its socket answers, the file is kept current (BIRD reads it when it starts) and the reload is
//! retried on each recheck.
//!
//! The daemon is told first (its peers: the node addresses whose routes BIRD will bring), BIRD
//! after, so a route learned over a new session always finds its node known.

use std::path::PathBuf;

use vrouter_bgp::BgpIntent;

use crate::daemon::Running;

/// Where BIRD's files are (the `--bird-*` options).
#[derive(Clone, Debug)]
pub struct BirdArgs {
    /// The configuration file the agent writes (`bird -c`).
    pub config: PathBuf,
    /// BIRD's control socket (`bird -s`).
    pub socket: PathBuf,
    /// Where BGP passwords' `secretKeyRef`s are read: `<dir>/<secret name>/<key>`, as a
    /// Kubernetes Secret mounted as a volume lays them out.
    pub secrets_dir: PathBuf,
}

/// What BIRD was last given.
pub(crate) struct Bird {
    args: BirdArgs,
    /// The text BIRD confirmed it runs (`None`: not yet, or the last reload failed).
    reloaded: Option<String>,
    /// The last error logged, so that a persisting one is logged once.
    last_error: Option<String>,
}

/// The daemon's settings BIRD's configuration depends on: the kernel table vrouter imports and
/// the device of the node's address (the host TAP).
pub(crate) fn daemon_settings(running: &Running) -> Result<(u32, String), String> {
    let t = &running.table;
    let table = t
        .get("kernel_routes")
        .ok_or("the daemon imports no kernel table ([kernel_routes] is missing): BIRD's routes would not reach it")?
        .get("table")
        .and_then(|v| v.as_integer())
        .unwrap_or(254);
    let device = t
        .get("host")
        .and_then(|h| h.get("tap"))
        .and_then(|v| v.as_str())
        .ok_or("the daemon has no [host] tap: BIRD speaks from the node's address on it")?;
    let table = u32::try_from(table).map_err(|_| format!("[kernel_routes] table {table} is out of range"))?;
    Ok((table, device.to_string()))
}

impl Bird {
    pub(crate) fn new(args: BirdArgs) -> Bird {
        Bird { args, reloaded: None, last_error: None }
    }

    pub(crate) fn secrets_dir(&self) -> &std::path::Path {
        &self.args.secrets_dir
    }

    /// Makes BIRD run `intent` (or says why it cannot): renders, writes the file if it changed,
    /// reloads if BIRD does not run that text yet. Blocking (file and socket I/O).
    pub(crate) fn sync(&mut self, intent: Result<BgpIntent, String>) {
        match self.try_sync(intent) {
            Ok(None) => {}
            Ok(Some(what)) => {
                tracing::info!("BIRD {what}");
                self.last_error = None;
            }
            Err(e) => {
                if self.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!("BIRD: {e}");
                    self.last_error = Some(e);
                }
            }
        }
    }

    fn try_sync(&mut self, intent: Result<BgpIntent, String>) -> Result<Option<String>, String> {
        let intent = intent?;
        let text = vrouter_bgp::render(&intent).map_err(|e| format!("configuration not rendered: {e}"))?;
        let written = vrouter_bgp::install(&self.args.config, &text)
            .map_err(|e| format!("writing {}: {e}", self.args.config.display()))?;
        if !written && self.reloaded.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        self.reloaded = None;
        let birdc = vrouter_bgp::Birdc::new(&self.args.socket);
        match birdc.configure() {
            Ok(_) => {
                self.reloaded = Some(text);
                Ok(Some(format!(
                    "reloaded {} ({} peers, {} blocks exported)",
                    self.args.config.display(),
                    intent.peers.len(),
                    intent.export_blocks.len()
                )))
            }
            Err(e) => Err(format!(
                "{} written, not reloaded ({e}); retried each second, and BIRD reads it when it starts",
                self.args.config.display()
            )),
        }
    }
}
