//! `vrouter-agent`: one per node, beside the `vrouter run` daemon (Felix's role in Calico).
//! It registers the node in etcd, follows the cluster's intent there (one watch over every
//! resource and the IPAM blocks, resumed from its revision after a reconnect, a full resync
//! after compaction), and keeps the parts of the node's config it owns (pod blocks, peers,
//! pods, policies) equal to what that intent says, through the daemon's control socket.
//!
//! It never makes things worse on the way: while etcd is away nothing is applied (the data
//! plane keeps its last-known-good state); a resync replaces its view only once the whole
//! list has arrived, so the node never sees an empty intermediate state; and the daemon
//! changes only what differs, new before old.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use vrouter_agent::{run, AgentArgs};

#[derive(Parser, Debug)]
#[command(
    name = "vrouter-agent",
    version,
    about = "vrouter's node agent: the cluster's intent in etcd, applied to this node's vrouter"
)]
struct Cli {
    /// The node daemon's control socket.
    #[arg(long, short = 's', env = "VROUTER_SOCKET", default_value = vrouter_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// etcd endpoints, comma-separated (as calicoctl reads them).
    #[arg(long, env = "ETCD_ENDPOINTS", value_delimiter = ',', required = true)]
    etcd_endpoints: Vec<String>,
    /// This node's name in the datastore (default: the daemon's `[node] name`).
    #[arg(long)]
    node: Option<String>,
    /// Labels of this node's `Node` resource (key=value; repeatable), merged into what the
    /// datastore has.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The node's BGP AS number (`spec.bgp.asNumber`).
    #[arg(long)]
    as_number: Option<u32>,
    /// Makes the node a BGP route reflector with this cluster ID
    /// (`spec.bgp.routeReflectorClusterID`).
    #[arg(long)]
    route_reflector_cluster_id: Option<std::net::Ipv4Addr>,
    /// BIRD's configuration file: the agent renders it from the datastore and reloads BIRD
    /// when it changes; routes to the other nodes then come from BGP.
    #[arg(long, requires = "bird_socket")]
    bird_config: Option<PathBuf>,
    /// BIRD's control socket (`bird -s`).
    #[arg(long, requires = "bird_config")]
    bird_socket: Option<PathBuf>,
    /// Where BGP passwords (`secretKeyRef`) are read: DIR/<secret>/<key>.
    #[arg(long, default_value = "/etc/vrouter/secrets")]
    secrets_dir: PathBuf,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("'{s}': expected key=value"))?;
    if k.is_empty() {
        return Err(format!("'{s}': the key is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let args = AgentArgs {
        etcd_endpoints: cli.etcd_endpoints,
        node: cli.node,
        labels: cli.labels.into_iter().collect(),
        as_number: cli.as_number,
        route_reflector_cluster_id: cli.route_reflector_cluster_id,
        bird: cli.bird_config.zip(cli.bird_socket).map(|(config, socket)| vrouter_agent::bgp::BirdArgs {
            config,
            socket,
            secrets_dir: cli.secrets_dir,
        }),
    };
    match run(&cli.socket, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vrouter-agent: {e}");
            ExitCode::from(2)
        }
    }
}
