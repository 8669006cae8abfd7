//! `vrouter-cni`: the CNI plugin (spec 1.0.0) that wires a pod into vrouter, as Calico's CNI
//! plugin does for Calico: ADD takes an address from IPAM (handle = the container ID, pools =
//! the enabled IPPools whose nodeSelector matches this node), writes the pod's
//! WorkloadEndpoint to etcd, and asks the node's daemon (its control socket) for the pod's TAP
//! in `CNI_NETNS` as `CNI_IFNAME` with the /32 and the default route via 169.254.1.1; DEL undoes
//! all of it; CHECK verifies it. docs/cni.md is the user's reference.
//!
//! Layers: [`spec`] is the protocol (environment, config, errors, results; no I/O), [`plugin`]
//! the three commands over a [`plugin::Backend`], [`cluster`] the real backend (etcd through
//! vrouter-cluster, the daemon through vrouterctl's client). [`run`] ties them for `main`.

pub mod cluster;
pub mod identity;
pub mod plugin;
pub mod spec;

use plugin::Backend;
use spec::{CniError, Command, Env, NetConf};

/// What the process prints on stdout and exits with.
pub struct Outcome {
    pub stdout: String,
    pub exit: u8,
}

/// One call: the environment through `vars`, the config on `stdin`; `connect` makes the
/// backend once the config is known.
pub fn run(
    vars: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    connect: impl FnOnce(&NetConf) -> Result<Box<dyn Backend>, CniError>,
) -> Outcome {
    let asked = NetConf::version_of(stdin);
    let version =
        asked.clone().filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str())).unwrap_or(spec::LATEST.into());
    match call(vars, stdin, asked.as_deref(), connect) {
        Ok(out) => Outcome { stdout: out.map(|v| v.to_string()).unwrap_or_default(), exit: 0 },
        Err(e) => Outcome { stdout: e.to_json(&version).to_string(), exit: 1 },
    }
}

fn call(
    vars: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    asked: Option<&str>,
    connect: impl FnOnce(&NetConf) -> Result<Box<dyn Backend>, CniError>,
) -> Result<Option<serde_json::Value>, CniError> {
    let env = Env::from_vars(vars)?;
    if env.command == Command::Version {
        return Ok(Some(spec::version_reply(asked)));
    }
    let conf = NetConf::parse(stdin)?;
    let mut backend = connect(&conf)?;
    let b = backend.as_mut();
    match env.command {
        Command::Add => plugin::add(b, &conf, &env).map(Some),
        Command::Del => plugin::del(b, &conf, &env).map(|()| None),
        Command::Check => plugin::check(b, &conf, &env).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn call_with(vars: &[(&str, &str)], stdin: &str) -> (Value, u8) {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let out = run(
            |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            stdin.as_bytes(),
            |_| Err(CniError::new(spec::Code::TryAgainLater, "etcd (http://127.0.0.1:1) is unreachable")),
        );
        let v = if out.stdout.is_empty() { Value::Null } else { serde_json::from_str(&out.stdout).unwrap() };
        (v, out.exit)
    }

    const CONF: &str = r#"{"cniVersion":"0.4.0","name":"vrnet","type":"vrouter-cni","etcd_endpoints":"http://127.0.0.1:1","node":"n1"}"#;

    #[test]
    fn version_answers_without_a_datastore() {
        let (v, exit) = call_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!((v["supportedVersions"].clone(), exit), (json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"]), 0));
        let (v, _) = call_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn errors_are_the_specs_json_on_stdout_with_a_nonzero_exit() {
        let add =
            [("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "abc"), ("CNI_NETNS", "/run/netns/x"), ("CNI_IFNAME", "eth0")];
        let (v, exit) = call_with(&add, CONF);
        assert_eq!(exit, 1);
        assert_eq!((v["cniVersion"].as_str(), v["code"].as_u64()), (Some("0.4.0"), Some(11)), "{v}");
        let (v, _) = call_with(&add, &CONF.replace("0.4.0", "2.0.0"));
        assert_eq!((v["cniVersion"].as_str(), v["code"].as_u64()), (Some("1.0.0"), Some(1)), "{v}");
        let (v, _) = call_with(&add[..1], CONF);
        assert_eq!(v["code"], 4, "{v}");
        let (v, _) = call_with(&add, "not json");
        assert_eq!(v["code"], 6, "{v}");
        let (v, _) = call_with(&add, &CONF.replace(r#""node":"n1""#, r#""node":"n1","bogus":1"#));
        assert_eq!(v["code"], 7, "{v}");
    }
}
