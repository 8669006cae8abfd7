//! The CNI protocol (spec 1.0.0, and the 0.3.0 to 0.4.0 shapes a runtime may ask for): the
//! environment, the network configuration on stdin, `CNI_ARGS`, errors with the spec's codes, and
//! results in the requested version's shape. No I/O: [`crate::run`] feeds it and prints.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;
use serde_json::{json, Value};

use vrouter_types::MacAddr;

/// The versions whose configs and results this plugin speaks, oldest first. 0.1.0 and 0.2.0
/// had another result shape (and no CHECK or prevResult), so they are refused.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version a VERSION reply and an error without a config say.
pub const LATEST: &str = "1.0.0";

/// Error codes from the spec ("Error" section); 999 is ours (the message says what failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    InvalidEnv = 4,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    Plugin = 999,
}

/// A failure as the runtime is told it: printed on stdout as the spec's error object, exit 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: String::new() }
    }
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
    /// The error object, in `version`'s shape (the same in every supported version).
    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({ "cniVersion": version, "code": self.code as u32, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code as u32)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// What the runtime put in the environment for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`: empty on a DEL whose namespace is gone.
    pub netns: String,
    pub ifname: String,
    pub args: CniArgs,
}

impl Env {
    /// Reads the `CNI_*` variables through `get` (the process environment in the binary).
    /// What a command needs and is missing or malformed is a [`Code::InvalidEnv`] error.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidEnv,
                    format!("CNI_COMMAND '{other}' is not one of ADD, DEL, CHECK, VERSION"),
                ))
            }
            None => return Err(CniError::new(Code::InvalidEnv, "CNI_COMMAND is not set")),
        };
        let var = |k: &str| get(k).unwrap_or_default();
        let env = Env {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: CniArgs::parse(&var("CNI_ARGS"))?,
        };
        if command == Command::Version {
            return Ok(env);
        }
        let missing = |k: &str, v: &str| v.is_empty().then(|| k.to_string());
        let needed = [
            missing("CNI_CONTAINERID", &env.container_id),
            missing("CNI_IFNAME", &env.ifname),
            // DEL may come after the namespace is gone (the spec lets CNI_NETNS be empty then).
            if command == Command::Del { None } else { missing("CNI_NETNS", &env.netns) },
        ];
        let missing: Vec<String> = needed.into_iter().flatten().collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("{} not set (needed for {command:?})", missing.join(", ")),
            ));
        }
        let bad_id = env.container_id.is_empty()
            || !env.container_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if bad_id {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_CONTAINERID '{}' must be letters, digits, '-', '_' or '.'", env.container_id),
            ));
        }
        if env.ifname.len() > 15 || env.ifname.contains(['/', ' ', ':']) || env.ifname == "." || env.ifname == ".." {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!(
                    "CNI_IFNAME '{}' is not a Linux interface name (1..=15 characters, no '/', ':' or blanks)",
                    env.ifname
                ),
            ));
        }
        if !env.netns.is_empty() && !clean_absolute(&env.netns) {
            return Err(CniError::new(
                Code::InvalidEnv,
                format!("CNI_NETNS '{}' must be an absolute path without '.' or '..' components", env.netns),
            ));
        }
        Ok(env)
    }
}

fn clean_absolute(p: &str) -> bool {
    p.strip_prefix('/').is_some_and(|r| !r.is_empty() && r.split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// `CNI_ARGS`: `K=V;K=V`. Keys this plugin knows are read; any other is an error unless
/// `IgnoreUnknown` is `1` or `true` (the CNI convention).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    /// `MAC=` (podman's `--network NET:mac=..`): the pod's MAC instead of the generated one.
    pub mac: Option<MacAddr>,
}

/// Keys Kubernetes runtimes send that carry nothing this plugin needs.
const KNOWN_IGNORED: [&str; 2] = ["K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"];

impl CniArgs {
    pub fn parse(s: &str) -> Result<CniArgs, CniError> {
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(CniError::new(Code::InvalidEnv, format!("CNI_ARGS: '{part}' is not KEY=VALUE")));
            };
            pairs.push((k.trim(), v.trim()));
        }
        let ignore_unknown =
            pairs.iter().any(|(k, v)| *k == "IgnoreUnknown" && (v.eq_ignore_ascii_case("true") || *v == "1"));
        let mut a = CniArgs::default();
        for (k, v) in pairs {
            match k {
                "IgnoreUnknown" => {}
                "K8S_POD_NAME" => a.pod_name = Some(v.to_string()).filter(|v| !v.is_empty()),
                "K8S_POD_NAMESPACE" => a.pod_namespace = Some(v.to_string()).filter(|v| !v.is_empty()),
                "MAC" => {
                    let mac: MacAddr = v.parse().map_err(|e| {
                        CniError::new(Code::InvalidEnv, format!("CNI_ARGS: MAC '{v}' is not a MAC address: {e}"))
                    })?;
                    if mac.0[0] & 1 != 0 {
                        return Err(CniError::new(Code::InvalidEnv, format!("CNI_ARGS: MAC {mac} is not unicast")));
                    }
                    a.mac = Some(mac);
                }
                // A static address would bypass IPAM's handles: refused rather than ignored.
                "IP" if !ignore_unknown || !v.is_empty() => {
                    return Err(CniError::new(
                        Code::InvalidEnv,
                        format!("CNI_ARGS: IP={v}: vrouter-cni takes addresses from IPAM only (static addresses are not supported)"),
                    ))
                }
                k if KNOWN_IGNORED.contains(&k) || ignore_unknown => {}
                k => {
                    return Err(CniError::new(
                        Code::InvalidEnv,
                        format!("CNI_ARGS: unknown key '{k}' (known: K8S_POD_NAME, K8S_POD_NAMESPACE, MAC, IgnoreUnknown; IgnoreUnknown=1 ignores the others)"),
                    ))
                }
            }
        }
        Ok(a)
    }
}

/// The network configuration on stdin (one plugin's part of a conflist, with what the runtime
/// adds: `runtimeConfig`, `args`, `prevResult`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub etcd_endpoints: Vec<String>,
    /// This node's name in the datastore (`Node` resource), as the node agent registers it.
    pub node: String,
    /// The node daemon's control socket.
    pub socket: String,
    /// The pods' namespace when `K8S_POD_NAMESPACE` does not give one.
    pub namespace: String,
    pub mtu: u16,
    /// Labels for the pod's WorkloadEndpoint (`args.cni.labels` or `runtimeConfig.labels`).
    pub labels: BTreeMap<String, String>,
    pub prev_result: Option<Value>,
}

/// The configuration keys, for the error that names an unknown one.
const KEYS: [&str; 13] = [
    "cniVersion",
    "name",
    "type",
    "etcd_endpoints",
    "node",
    "socket",
    "namespace",
    "mtu",
    "args",
    "runtimeConfig",
    "capabilities",
    "prevResult",
    "dns",
];

use vrouter_api::config::{DEFAULT_POD_MTU, MAX_MTU, MIN_MTU};

impl NetConf {
    /// The `cniVersion` of a config, before anything else is checked: errors are reported in
    /// it, and VERSION needs nothing more.
    pub fn version_of(stdin: &[u8]) -> Option<String> {
        let v: Value = serde_json::from_slice(stdin).ok()?;
        v.get("cniVersion")?.as_str().map(String::from)
    }

    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(Code::Decode, format!("the network configuration is not JSON: {e}")))?;
        let Some(obj) = v.as_object() else {
            return Err(CniError::new(Code::Decode, "the network configuration is not a JSON object"));
        };
        let invalid = |m: String| CniError::new(Code::InvalidConfig, m);
        if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(invalid(format!("unknown key '{k}' (vrouter-cni's keys: {})", KEYS.join(", "))));
        }
        let version = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None => {
                return Err(CniError::new(Code::IncompatibleVersion, "cniVersion is missing (0.1.0, not supported)"))
            }
            Some(_) => return Err(invalid("cniVersion must be a string".into())),
        };
        check_version(&version)?;
        let string = |k: &str| -> Result<Option<String>, CniError> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(invalid(format!("'{k}' must be a non-empty string"))),
            }
        };
        let name = string("name")?.ok_or_else(|| invalid("'name' (the network's name) is missing".into()))?;
        if string("type")?.is_none() {
            return Err(invalid("'type' is missing".into()));
        }
        let etcd_endpoints = match obj.get("etcd_endpoints") {
            Some(Value::String(s)) => s.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(String::from)
                        .ok_or_else(|| invalid("'etcd_endpoints' entries must be strings".into()))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![],
            Some(_) => return Err(invalid("'etcd_endpoints' must be a string (comma-separated) or a list".into())),
        };
        if etcd_endpoints.is_empty() {
            return Err(invalid(
                "'etcd_endpoints' is missing: the etcd cluster, e.g. \"http://127.0.0.1:2379\"".into(),
            ));
        }
        let node = string("node")?
            .ok_or_else(|| invalid("'node' is missing: this node's name as the agent registers it".into()))?;
        let socket = string("socket")?.unwrap_or_else(|| vrouter_api::DEFAULT_SOCKET.to_string());
        let namespace = string("namespace")?.unwrap_or_else(|| "default".to_string());
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => DEFAULT_POD_MTU,
            Some(v) => match v.as_u64() {
                Some(m) if (u64::from(MIN_MTU)..=u64::from(MAX_MTU)).contains(&m) => m as u16,
                _ => return Err(invalid(format!("'mtu' {v} must be {MIN_MTU}..={MAX_MTU}"))),
            },
        };
        let mut labels = BTreeMap::new();
        // The CNI convention: "args": {"cni": {"labels": [{"key": .., "value": ..}]}}.
        if let Some(l) = obj.get("args").and_then(|a| a.get("cni")).and_then(|c| c.get("labels")) {
            #[derive(Deserialize)]
            struct Label {
                key: String,
                value: String,
            }
            let list: Vec<Label> = serde_json::from_value(l.clone())
                .map_err(|e| invalid(format!("args.cni.labels must be a list of {{\"key\", \"value\"}}: {e}")))?;
            labels.extend(list.into_iter().map(|l| (l.key, l.value)));
        }
        if let Some(l) = obj.get("runtimeConfig").and_then(|r| r.get("labels")) {
            let map: BTreeMap<String, String> = serde_json::from_value(l.clone())
                .map_err(|e| invalid(format!("runtimeConfig.labels must be an object of strings: {e}")))?;
            labels.extend(map);
        }
        for (k, v) in &labels {
            if !label_ok(k, true) || !label_ok(v, false) {
                return Err(invalid(format!(
                    "label {k}={v}: not a Kubernetes label (key [prefix/]name, both of letters, digits, '-', '_', '.')"
                )));
            }
        }
        Ok(NetConf {
            cni_version: version,
            name,
            etcd_endpoints,
            node,
            socket,
            namespace,
            mtu,
            labels,
            prev_result: obj.get("prevResult").cloned(),
        })
    }
}

fn label_ok(s: &str, key: bool) -> bool {
    let part =
        |p: &str, max: usize| p.len() <= max && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if key {
        let (prefix, name) = s.rsplit_once('/').map_or((None, s), |(p, n)| (Some(p), n));
        !name.is_empty() && part(name, 63) && prefix.is_none_or(|p| !p.is_empty() && part(p, 253))
    } else {
        part(s, 63)
    }
}

/// Whether this plugin speaks `version` (a [`Code::IncompatibleVersion`] error if not).
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            Code::IncompatibleVersion,
            format!("cniVersion {version} is not supported (supported: {})", SUPPORTED_VERSIONS.join(", ")),
        ))
    }
}

/// VERSION's answer.
pub fn version_reply(request_version: Option<&str>) -> Value {
    let v = request_version.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(LATEST);
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

/// What ADD made, to be given back as a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Added {
    /// The host side: the TAP vrouter created (inside the pod once moved, the name it had).
    pub host_ifname: String,
    pub host_mac: MacAddr,
    pub ifname: String,
    pub mac: MacAddr,
    pub netns: String,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// The ADD result in `version`'s shape: interfaces (host side, then the sandbox's), the /32
/// on the sandbox interface, the default route via the gateway.
pub fn add_result(version: &str, a: &Added) -> Value {
    let mut ip = json!({
        "address": format!("{}/32", a.address),
        "gateway": a.gateway.to_string(),
        "interface": 1,
    });
    if version != "1.0.0" {
        // 0.3.x and 0.4.0 name the IP family; 1.0.0 dropped the field.
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            { "name": a.host_ifname, "mac": a.host_mac.to_string() },
            { "name": a.ifname, "mac": a.mac.to_string(), "sandbox": a.netns },
        ],
        "ips": [ip],
        "routes": [ { "dst": "0.0.0.0/0", "gw": a.gateway.to_string() } ],
        "dns": {},
    })
}

/// The address a previous result gave the sandbox interface (CHECK compares it).
pub fn prev_address(prev: &Value) -> Option<Ipv4Addr> {
    prev.get("ips")?.as_array()?.iter().find_map(|ip| {
        let a = ip.get("address")?.as_str()?;
        a.split('/').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::from_vars(|k| m.get(k).cloned())
    }

    const ID: &str = "8d3f0f4c2b1a9e8d7c6b5a4f3e2d1c0b8d3f0f4c2b1a9e8d7c6b5a4f3e2d1c0b";

    fn add_env(extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", ID.to_string()),
            ("CNI_NETNS", "/run/netns/netns-1234".to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/opt/cni/bin".to_string()),
        ];
        for (k, val) in extra {
            let k: &'static str = Box::leak(k.to_string().into_boxed_str());
            v.retain(|(x, _)| *x != k);
            v.push((k, val.to_string()));
        }
        v
    }

    fn env_of(v: &[(&'static str, String)]) -> Result<Env, CniError> {
        let pairs: Vec<(&str, &str)> = v.iter().map(|(k, x)| (*k, x.as_str())).collect();
        env(&pairs)
    }

    #[test]
    fn podmans_add_environment_parses() {
        let e = env_of(&add_env(&[("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop")])).unwrap();
        assert_eq!((e.command, e.ifname.as_str(), e.netns.as_str()), (Command::Add, "eth0", "/run/netns/netns-1234"));
        assert_eq!(e.args.pod_name.as_deref(), Some("web"));
        assert_eq!(e.args.pod_namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn missing_or_bad_environment_is_code_4() {
        assert_eq!(env(&[]).unwrap_err().code, Code::InvalidEnv);
        let e = env(&[("CNI_COMMAND", "REMOVE")]).unwrap_err();
        assert!(e.msg.contains("'REMOVE' is not one of ADD, DEL, CHECK, VERSION"), "{e}");
        let v = add_env(&[("CNI_NETNS", "")]);
        let e = env_of(&v).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (Code::InvalidEnv, "CNI_NETNS not set (needed for Add)"));
        // DEL after the namespace is gone: fine.
        let v = add_env(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]);
        assert_eq!(env_of(&v).unwrap().command, Command::Del);
        for (k, bad) in [
            ("CNI_NETNS", "run/netns/x"),
            ("CNI_NETNS", "/run/../x"),
            ("CNI_IFNAME", "eth0/1"),
            ("CNI_IFNAME", "a-very-long-ifname"),
            ("CNI_CONTAINERID", "a;b"),
        ] {
            let e = env_of(&add_env(&[(k, bad)])).unwrap_err();
            assert!(e.code == Code::InvalidEnv && e.msg.contains(k), "{k}={bad}: {e}");
        }
        // VERSION needs nothing else.
        assert_eq!(env(&[("CNI_COMMAND", "VERSION")]).unwrap().command, Command::Version);
    }

    #[test]
    fn cni_args_unknown_keys_need_ignore_unknown() {
        let e = CniArgs::parse("FOO=1").unwrap_err();
        assert!(e.code == Code::InvalidEnv && e.msg.contains("unknown key 'FOO'"), "{e}");
        assert_eq!(CniArgs::parse("FOO=1;IgnoreUnknown=true").unwrap(), CniArgs::default());
        assert_eq!(CniArgs::parse("K8S_POD_UID=x;K8S_POD_INFRA_CONTAINER_ID=y").unwrap(), CniArgs::default());
        assert!(CniArgs::parse("garbage").unwrap_err().msg.contains("not KEY=VALUE"));
        let a = CniArgs::parse("IgnoreUnknown=1;MAC=0a:58:00:00:00:01").unwrap();
        assert_eq!(a.mac, Some(MacAddr([0x0a, 0x58, 0, 0, 0, 1])));
        assert!(CniArgs::parse("MAC=01:00:00:00:00:01").unwrap_err().msg.contains("not unicast"));
        let e = CniArgs::parse("IgnoreUnknown=1;IP=10.244.1.9").unwrap_err();
        assert!(e.msg.contains("IPAM only"), "{e}");
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"vrnet","type":"vrouter-cni",
        "etcd_endpoints":"http://127.0.0.1:2379, http://127.0.0.2:2379","node":"n1","socket":"/run/vr.sock"}"#;

    #[test]
    fn config_parses_with_defaults() {
        let c = NetConf::parse(CONF.as_bytes()).unwrap();
        assert_eq!(c.etcd_endpoints, ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]);
        assert_eq!(
            (c.node.as_str(), c.socket.as_str(), c.namespace.as_str(), c.mtu),
            ("n1", "/run/vr.sock", "default", 1480)
        );
        let with = CONF.replace(r#""node":"n1""#, r#""node":"n1","mtu":1400,"namespace":"ops","args":{"cni":{"labels":[{"key":"app","value":"web"}]}},"runtimeConfig":{"labels":{"tier":"front"}},"prevResult":{"ips":[{"address":"10.244.1.2/32"}]}"#);
        let c = NetConf::parse(with.as_bytes()).unwrap();
        assert_eq!((c.mtu, c.namespace.as_str()), (1400, "ops"));
        assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(c.labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(prev_address(c.prev_result.as_ref().unwrap()), Some("10.244.1.2".parse().unwrap()));
    }

    #[test]
    fn config_errors_have_the_spec_codes() {
        let code = |s: &str| NetConf::parse(s.as_bytes()).unwrap_err();
        assert_eq!(code("{").code, Code::Decode);
        assert_eq!(code("[]").code, Code::Decode);
        let e = code(&CONF.replace("1.0.0", "1.1.0"));
        assert_eq!(e.code, Code::IncompatibleVersion);
        assert!(e.msg.contains("supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0"), "{e}");
        assert_eq!(code(&CONF.replace("1.0.0", "0.2.0")).code, Code::IncompatibleVersion);
        let e = code(&CONF.replace(r#""node":"n1","#, r#""node":"n1","nodename":"x","#));
        assert!(e.code == Code::InvalidConfig && e.msg.contains("unknown key 'nodename'"), "{e}");
        let e = code(&CONF.replace(r#""node":"n1","#, ""));
        assert!(e.code == Code::InvalidConfig && e.msg.contains("'node' is missing"), "{e}");
        let e = code(&CONF.replace(r#""node":"n1""#, r#""node":"n1","mtu":9001"#));
        assert!(e.msg.contains("'mtu' 9001 must be 576..=9000"), "{e}");
        let e = code(&CONF.replace(r#""etcd_endpoints":"http://127.0.0.1:2379, http://127.0.0.2:2379","#, ""));
        assert!(e.msg.contains("'etcd_endpoints' is missing"), "{e}");
        let e = code(&CONF.replace(r#""node":"n1""#, r#""node":"n1","runtimeConfig":{"labels":{"a b":"c"}}"#));
        assert!(e.msg.contains("not a Kubernetes label"), "{e}");
    }

    #[test]
    fn version_reply_and_error_object() {
        let v = version_reply(Some("0.4.0"));
        assert_eq!(v, json!({"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}));
        assert_eq!(version_reply(Some("9.9.9"))["cniVersion"], "1.0.0");
        let e = CniError::new(Code::TryAgainLater, "etcd unreachable").with_details("http://127.0.0.1:1: refused");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion": "1.0.0", "code": 11, "msg": "etcd unreachable", "details": "http://127.0.0.1:1: refused"})
        );
        assert_eq!(
            CniError::new(Code::Plugin, "x").to_json("0.4.0"),
            json!({"cniVersion": "0.4.0", "code": 999, "msg": "x"})
        );
    }

    #[test]
    fn results_take_the_requested_versions_shape() {
        let a = Added {
            host_ifname: "vr0123456789a".into(),
            host_mac: MacAddr([0xee; 6]),
            ifname: "eth0".into(),
            mac: MacAddr([0x0a, 0x58, 1, 2, 3, 4]),
            netns: "/run/netns/netns-1".into(),
            address: "10.244.1.2".parse().unwrap(),
            gateway: "169.254.1.1".parse().unwrap(),
        };
        let r = add_result("1.0.0", &a);
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "vr0123456789a", "mac": "ee:ee:ee:ee:ee:ee"},
                    {"name": "eth0", "mac": "0a:58:01:02:03:04", "sandbox": "/run/netns/netns-1"}
                ],
                "ips": [{"address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {}
            })
        );
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let r = add_result(v, &a);
            assert_eq!((r["cniVersion"].as_str(), r["ips"][0]["version"].as_str()), (Some(v), Some("4")));
        }
        assert_eq!(prev_address(&r), Some(a.address));
    }
}
