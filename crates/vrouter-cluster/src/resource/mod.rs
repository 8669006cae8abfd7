//! Calico `projectcalico.org/v3` resources as vrouter supports them: their types, manifest
//! parsing (multi-document YAML or JSON, `List` kinds), validation, the stored form and output.
//!
//! A calicoctl user's manifests apply unchanged for every kind and field vrouter supports.
//! A field Calico defines that vrouter does not honour is refused by name with the reason
//! (never ignored), and an unknown field is refused with the list of valid fields. Every error
//! names the document (1-based, with its kind and name when known), the field path
//! (`spec.ingress[0].destination.ports[1]`) and the valid values. docs/resources.md lists every
//! kind and field.

mod bgp;
mod fields;
mod policy;
mod spec;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{json, Value};

pub use bgp::{
    BgpConfiguration, BgpConfigurationSpec, BgpPassword, BgpPeer, BgpPeerSpec, BirdDebug, GoDuration, LogSeverity,
    PeerNodes, PeerTarget, ReversePeering, SecretKeyRef, DEFAULT_AS_NUMBER, DEFAULT_RESTART_SECS, GLOBAL_CONFIG_NAME,
    MAX_RESTART_SECS, NODE_CONFIG_PREFIX,
};
pub use fields::FieldError;
use fields::{check_label_name, check_labels, check_subdomain, err, FResult, Obj};
pub use policy::{
    EntityRule, GlobalNetworkPolicy, Icmp, NetworkPolicy, PolicySpec, PolicyType, Port, Protocol, Rule, RuleAction,
};
pub use spec::{
    EndpointPort, IpPool, IpPoolSpec, Node, NodeAddress, NodeBgp, NodeSpec, Profile, ProfileSpec, WorkloadEndpoint,
    WorkloadEndpointSpec,
};

/// The only API version accepted.
pub const API_VERSION: &str = "projectcalico.org/v3";

/// The kinds vrouter stores.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Node,
    IpPool,
    WorkloadEndpoint,
    NetworkPolicy,
    GlobalNetworkPolicy,
    Profile,
    BgpConfiguration,
    BgpPeer,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Node,
        Kind::IpPool,
        Kind::WorkloadEndpoint,
        Kind::NetworkPolicy,
        Kind::GlobalNetworkPolicy,
        Kind::Profile,
        Kind::BgpConfiguration,
        Kind::BgpPeer,
    ];

    /// The `kind:` field's spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::IpPool => "IPPool",
            Kind::WorkloadEndpoint => "WorkloadEndpoint",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Kind::Profile => "Profile",
            Kind::BgpConfiguration => "BGPConfiguration",
            Kind::BgpPeer => "BGPPeer",
        }
    }

    /// The plural used in etcd keys (as Calico's etcdv3 backend).
    pub const fn plural(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::IpPool => "ippools",
            Kind::WorkloadEndpoint => "workloadendpoints",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::GlobalNetworkPolicy => "globalnetworkpolicies",
            Kind::Profile => "profiles",
            Kind::BgpConfiguration => "bgpconfigurations",
            Kind::BgpPeer => "bgppeers",
        }
    }

    pub const fn namespaced(self) -> bool {
        matches!(self, Kind::WorkloadEndpoint | Kind::NetworkPolicy)
    }

    /// The column headers of `vrouterctl get KIND -o table` (see [`Resource::table_row`]).
    pub const fn table_header(self) -> &'static [&'static str] {
        match self {
            Kind::Node => &["NAME", "IPV4", "ASN"],
            Kind::IpPool => &["NAME", "CIDR", "BLOCKSIZE", "IPIPMODE", "NATOUTGOING", "DISABLED", "SELECTOR"],
            Kind::WorkloadEndpoint => &["NAMESPACE", "NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE"],
            Kind::NetworkPolicy => &["NAMESPACE", "NAME", "ORDER", "SELECTOR"],
            Kind::GlobalNetworkPolicy => &["NAME", "ORDER", "SELECTOR"],
            Kind::Profile => &["NAME", "LABELS"],
            // calicoctl's columns.
            Kind::BgpConfiguration => &["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"],
            Kind::BgpPeer => &["NAME", "PEERIP", "NODE", "ASN"],
        }
    }

    /// The spellings `FromStr` accepts, for messages.
    pub const VALID_SPELLINGS: &'static str = "node (nodes, no), ippool (ippools, ipp, pool, pools), workloadendpoint \
         (workloadendpoints, wep, weps), networkpolicy (networkpolicies, policy, policies, pol, pols, netpol, netpols, np), \
         globalnetworkpolicy (globalnetworkpolicies, gnp, gnps, globalpolicy, globalpolicies), profile (profiles, pro, pros), \
         bgpconfiguration (bgpconfigurations, bgpconfig, bgpconfigs), bgppeer (bgppeers, bgpp, bgpps, bp, bps)";
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;
    /// calicoctl's spellings, case-insensitive (`IPPool`, `ippools`, `gnp`, `wep`, ...).
    fn from_str(s: &str) -> Result<Kind, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "node" | "nodes" | "no" => Kind::Node,
            "ippool" | "ippools" | "ipp" | "pool" | "pools" => Kind::IpPool,
            "workloadendpoint" | "workloadendpoints" | "wep" | "weps" => Kind::WorkloadEndpoint,
            "networkpolicy" | "networkpolicies" | "policy" | "policies" | "pol" | "pols" | "netpol" | "netpols"
            | "np" => Kind::NetworkPolicy,
            "globalnetworkpolicy" | "globalnetworkpolicies" | "gnp" | "gnps" | "globalpolicy" | "globalpolicies" => {
                Kind::GlobalNetworkPolicy
            }
            "profile" | "profiles" | "pro" | "pros" => Kind::Profile,
            "bgpconfiguration" | "bgpconfigurations" | "bgpconfig" | "bgpconfigs" => Kind::BgpConfiguration,
            "bgppeer" | "bgppeers" | "bgpp" | "bgpps" | "bp" | "bps" => Kind::BgpPeer,
            _ => return Err(format!("unknown resource kind '{s}'; valid kinds: {}", Kind::VALID_SPELLINGS)),
        })
    }
}

/// `metadata`. `resourceVersion` is the etcd mod_revision of the resource's key (a decimal
/// string in manifests, never part of the stored value). `uid` and `creationTimestamp`, which
/// `calicoctl get -o yaml` prints, are accepted so such output re-applies, and dropped: vrouter
/// assigns neither.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip)]
    pub resource_version: Option<i64>,
}

impl Metadata {
    /// A cluster-scoped resource's metadata with just a name.
    pub fn named(name: &str) -> Metadata {
        Metadata { name: name.to_string(), ..Default::default() }
    }
}

const METADATA_REFUSED: &[(&str, &str)] = &[
    ("generateName", "vrouter needs an explicit metadata.name"),
    ("ownerReferences", "vrouter does no garbage collection of dependent resources"),
    ("finalizers", "vrouter does no garbage collection of dependent resources"),
    ("deletionTimestamp", "set by a Kubernetes API server; vrouter deletes immediately"),
    ("deletionGracePeriodSeconds", "set by a Kubernetes API server; vrouter deletes immediately"),
    ("generation", "set by a Kubernetes API server; vrouter versions resources by resourceVersion only"),
    ("managedFields", "server-side apply is not supported"),
    ("selfLink", "set by a Kubernetes API server"),
    ("clusterName", "vrouter has one cluster per datastore"),
];

fn parse_metadata(v: Option<&Value>, kind: Kind) -> FResult<Metadata> {
    let Some(v) = v else {
        return err("metadata", "is required (with at least metadata.name)");
    };
    let o = Obj::new(
        v,
        "metadata",
        &["name", "namespace", "labels", "annotations", "resourceVersion", "uid", "creationTimestamp"],
        METADATA_REFUSED,
    )?;
    let name = o.req_str("name")?.to_string();
    check_subdomain(&name, "metadata.name")?;
    let namespace = match (o.str("namespace")?, kind.namespaced()) {
        (Some(ns), true) => {
            check_label_name(ns, "metadata.namespace")?;
            Some(ns.to_string())
        }
        // calicoctl's default namespace.
        (None, true) => Some("default".to_string()),
        (Some(_), false) => {
            return err("metadata.namespace", format!("{kind} is cluster-scoped: remove metadata.namespace"));
        }
        (None, false) => None,
    };
    let labels = o.str_map("labels")?;
    check_labels(&labels, "metadata.labels")?;
    let annotations = o.str_map("annotations")?;
    let resource_version = match o.get("resourceVersion") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(fields::int_value(v, "metadata.resourceVersion", 1, i64::MAX).map_err(|_| FieldError {
            path: "metadata.resourceVersion".into(),
            message: format!(
                "{} is not a resourceVersion: expected the decimal revision `get` printed (e.g. \"1234\")",
                fields::show(v)
            ),
        })?),
    };
    // Read only to check their type; vrouter keeps neither (see `Metadata`).
    o.str("uid")?;
    o.str("creationTimestamp")?;
    Ok(Metadata { name, namespace, labels, annotations, resource_version })
}

/// One resource.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Node(Node),
    IpPool(IpPool),
    WorkloadEndpoint(WorkloadEndpoint),
    NetworkPolicy(NetworkPolicy),
    GlobalNetworkPolicy(GlobalNetworkPolicy),
    Profile(Profile),
    BgpConfiguration(BgpConfiguration),
    BgpPeer(BgpPeer),
}

/// Why a manifest was refused: the document (1-based, as the user counts `---` sections; a
/// `List`'s items are `items[i]` in `path`), the resource's kind and name when known, the field
/// path and the message (what is wrong and what is valid).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub document: usize,
    pub kind: Option<String>,
    /// `namespace/name` for namespaced kinds.
    pub name: Option<String>,
    /// Empty when the error is about the document as a whole (syntax).
    pub path: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, " ({k} '{n}')")?,
            (Some(k), None) => write!(f, " ({k})")?,
            (None, Some(n)) => write!(f, " ('{n}')")?,
            (None, None) => {}
        }
        if self.path.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.path, self.message)
        }
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Node(_) => Kind::Node,
            Resource::IpPool(_) => Kind::IpPool,
            Resource::WorkloadEndpoint(_) => Kind::WorkloadEndpoint,
            Resource::NetworkPolicy(_) => Kind::NetworkPolicy,
            Resource::GlobalNetworkPolicy(_) => Kind::GlobalNetworkPolicy,
            Resource::Profile(_) => Kind::Profile,
            Resource::BgpConfiguration(_) => Kind::BgpConfiguration,
            Resource::BgpPeer(_) => Kind::BgpPeer,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Node(r) => &r.metadata,
            Resource::IpPool(r) => &r.metadata,
            Resource::WorkloadEndpoint(r) => &r.metadata,
            Resource::NetworkPolicy(r) => &r.metadata,
            Resource::GlobalNetworkPolicy(r) => &r.metadata,
            Resource::Profile(r) => &r.metadata,
            Resource::BgpConfiguration(r) => &r.metadata,
            Resource::BgpPeer(r) => &r.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            Resource::Node(r) => &mut r.metadata,
            Resource::IpPool(r) => &mut r.metadata,
            Resource::WorkloadEndpoint(r) => &mut r.metadata,
            Resource::NetworkPolicy(r) => &mut r.metadata,
            Resource::GlobalNetworkPolicy(r) => &mut r.metadata,
            Resource::Profile(r) => &mut r.metadata,
            Resource::BgpConfiguration(r) => &mut r.metadata,
            Resource::BgpPeer(r) => &mut r.metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    pub fn resource_version(&self) -> Option<i64> {
        self.metadata().resource_version
    }

    pub fn set_resource_version(&mut self, rv: Option<i64>) {
        self.metadata_mut().resource_version = rv;
    }

    /// `name`, or `namespace/name` for namespaced kinds.
    pub fn display_name(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name()),
            None => self.name().to_string(),
        }
    }

    /// The etcd key: `/calico/resources/v3/projectcalico.org/<plural>[/<namespace>]/<name>`.
    pub fn key(&self) -> String {
        resource_key(self.kind(), self.namespace(), self.name())
    }

    fn spec_value(&self) -> Value {
        let v = match self {
            Resource::Node(r) => serde_json::to_value(&r.spec),
            Resource::IpPool(r) => serde_json::to_value(&r.spec),
            Resource::WorkloadEndpoint(r) => serde_json::to_value(&r.spec),
            Resource::NetworkPolicy(r) => serde_json::to_value(&r.spec),
            Resource::GlobalNetworkPolicy(r) => serde_json::to_value(&r.spec),
            Resource::Profile(r) => serde_json::to_value(&r.spec),
            Resource::BgpConfiguration(r) => serde_json::to_value(&r.spec),
            Resource::BgpPeer(r) => serde_json::to_value(&r.spec),
        };
        // Plain data (strings, numbers, maps with string keys): serialising cannot fail.
        v.unwrap_or(Value::Null)
    }

    fn value(&self, with_rv: bool) -> Value {
        let mut meta = serde_json::to_value(self.metadata()).unwrap_or(Value::Null);
        if let (true, Some(rv), Value::Object(m)) = (with_rv, self.resource_version(), &mut meta) {
            m.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        json!({ "apiVersion": API_VERSION, "kind": self.kind().name(), "metadata": meta, "spec": self.spec_value() })
    }

    /// The manifest `get -o yaml|json` prints: the stored form plus `metadata.resourceVersion`.
    /// It parses back with [`parse_manifests`] to the same resource.
    pub fn to_manifest(&self) -> Value {
        self.value(true)
    }

    /// The value stored at [`Resource::key`]: the manifest without `resourceVersion` (that is
    /// the key's mod_revision).
    pub fn to_stored_json(&self) -> Vec<u8> {
        // Serialising a `Value` cannot fail.
        serde_json::to_vec(&self.value(false)).unwrap_or_default()
    }

    /// Reads a stored value back (as strictly as a manifest: a value written by another tool
    /// with a field vrouter does not support is refused, not half-read), with its
    /// resourceVersion set to the key's `mod_revision`.
    pub fn from_stored(kind: Kind, bytes: &[u8], mod_revision: i64) -> Result<Resource, ManifestError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| ManifestError {
            document: 1,
            kind: Some(kind.name().into()),
            name: None,
            path: String::new(),
            message: format!("stored value is not JSON: {e}"),
        })?;
        let mut r = parse_value(&v, 1, "", Some(kind))?;
        if r.kind() != kind {
            return Err(ManifestError {
                document: 1,
                kind: Some(r.kind().name().into()),
                name: Some(r.display_name()),
                path: "kind".into(),
                message: format!("stored under {} but is a {}", kind.plural(), r.kind()),
            });
        }
        r.set_resource_version(Some(mod_revision));
        Ok(r)
    }

    /// The row of `get -o table`, matching [`Kind::table_header`].
    pub fn table_row(&self) -> Vec<String> {
        let opt = |o: Option<String>| o.unwrap_or_default();
        match self {
            Resource::Node(n) => {
                let bgp = n.spec.bgp.as_ref();
                vec![
                    n.metadata.name.clone(),
                    opt(bgp.and_then(|b| b.ipv4_address).map(|a| a.to_string())),
                    opt(bgp.and_then(|b| b.as_number).map(|a| a.to_string())),
                ]
            }
            Resource::IpPool(p) => vec![
                p.metadata.name.clone(),
                p.spec.cidr.to_string(),
                p.spec.block_size.to_string(),
                format!("{:?}", p.spec.ipip_mode),
                p.spec.nat_outgoing.to_string(),
                p.spec.disabled.to_string(),
                p.spec.node_selector.to_string(),
            ],
            Resource::WorkloadEndpoint(w) => vec![
                opt(w.metadata.namespace.clone()),
                w.metadata.name.clone(),
                opt(w.spec.workload.clone().or_else(|| w.spec.pod.clone())),
                w.spec.node.clone(),
                w.spec.ip_networks.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","),
                opt(w.spec.interface_name.clone()),
            ],
            Resource::NetworkPolicy(p) => vec![
                opt(p.metadata.namespace.clone()),
                p.metadata.name.clone(),
                opt(p.spec.order.map(|o| o.to_string())),
                p.spec.selector.to_string(),
            ],
            Resource::GlobalNetworkPolicy(p) => {
                vec![p.metadata.name.clone(), opt(p.spec.order.map(|o| o.to_string())), p.spec.selector.to_string()]
            }
            Resource::Profile(p) => vec![
                p.metadata.name.clone(),
                p.spec.labels_to_apply.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            ],
            // As calicoctl: the fields as stored, empty when absent.
            Resource::BgpConfiguration(c) => vec![
                c.metadata.name.clone(),
                opt(c.spec.log_severity_screen.map(|l| format!("{l:?}"))),
                opt(c.spec.node_to_node_mesh_enabled.map(|b| b.to_string())),
                opt(c.spec.as_number.map(|a| a.to_string())),
            ],
            // As calicoctl: the peer's address or selector, the node or node selector
            // (`(global)`: every node).
            Resource::BgpPeer(p) => {
                let (peer, asn) = match &p.spec.peer {
                    PeerTarget::Ip { ip, as_number } => (ip.to_string(), as_number.to_string()),
                    PeerTarget::Selector(s) => (s.to_string(), String::new()),
                };
                let node = match &p.spec.nodes {
                    PeerNodes::All => "(global)".to_string(),
                    PeerNodes::Node(n) => n.clone(),
                    PeerNodes::Selector(s) => s.to_string(),
                };
                vec![p.metadata.name.clone(), peer, node, asn]
            }
        }
    }
}

/// The etcd key of a resource (see [`Resource::key`]); a namespace only counts for a
/// namespaced kind. The layout itself is [`crate::store::keys`].
pub fn resource_key(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    crate::store::keys::resource(kind.plural(), namespace.filter(|_| kind.namespaced()), name)
}

/// A WorkloadEndpoint annotation (written by vrouter-cni, read by the node agent): the pod's
/// network namespace, which the agent needs to recreate the pod's port after a daemon restart.
pub const NETNS_ANNOTATION: &str = "vrouter.io/netns";
/// A WorkloadEndpoint annotation: the pod interface's MTU (the CNI network config's), which the
/// agent gives the port too (its default without it).
pub const MTU_ANNOTATION: &str = "vrouter.io/mtu";

/// Parses manifests: one or more YAML documents separated by `---`, or one or more JSON
/// values; a document may be a `List` (or `NodeList`, `IPPoolList`, ...) with `items`, as
/// `calicoctl get -o yaml` prints. Empty documents are skipped. The first error is returned.
pub fn parse_manifests(text: &str) -> Result<Vec<Resource>, ManifestError> {
    let docs = split_documents(text)?;
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        parse_document(doc, i + 1, &mut out)?;
    }
    Ok(out)
}

/// Whether `text` is datastore manifests rather than a node's TOML config: some document is a
/// map with both `apiVersion` and `kind` (YAML or JSON). Text that does not parse as YAML or
/// JSON counts as manifests when a line starts with `apiVersion:` (or `"apiVersion"`), so that
/// a broken manifest gets the manifest parser's error rather than the TOML one.
/// (`vrouterctl apply -f` routes on this.)
pub fn is_manifest(text: &str) -> bool {
    match split_documents(text) {
        Ok(docs) => docs.iter().any(|d| d.get("apiVersion").is_some() && d.get("kind").is_some()),
        Err(_) => text.lines().map(str::trim_start).any(|l| {
            l.starts_with("apiVersion:") || l.starts_with("\"apiVersion\"") || l.starts_with("{\"apiVersion\"")
        }),
    }
}

fn syntax_error(document: usize, message: String) -> ManifestError {
    ManifestError { document, kind: None, name: None, path: String::new(), message }
}

/// The documents of a manifest as JSON values (YAML converted), nulls (empty documents) dropped.
fn split_documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    let trimmed = text.trim_start();
    let mut docs = Vec::new();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        for (i, v) in stream.enumerate() {
            let v = v.map_err(|e| syntax_error(i + 1, format!("JSON syntax: {e}")))?;
            // A top-level JSON array is a list of resources.
            match v {
                Value::Array(items) => docs.push(json!({ "kind": "List", "items": items, "apiVersion": API_VERSION })),
                v => docs.push(v),
            }
        }
    } else {
        use serde::Deserialize;
        for (i, d) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v = Value::deserialize(d).map_err(|e| syntax_error(i + 1, format!("YAML: {e}")))?;
            docs.push(v);
        }
    }
    docs.retain(|v| !v.is_null());
    Ok(docs)
}

fn with_context(e: FieldError, document: usize, prefix: &str, v: &Value) -> ManifestError {
    let kind = v.get("kind").and_then(Value::as_str).map(str::to_string);
    let meta = v.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).map(|n| {
        let namespaced = kind.as_deref().and_then(|k| k.parse::<Kind>().ok()).is_some_and(Kind::namespaced);
        match meta.and_then(|m| m.get("namespace")).and_then(Value::as_str) {
            Some(ns) if namespaced => format!("{ns}/{n}"),
            None if namespaced => format!("default/{n}"),
            _ => n.to_string(),
        }
    });
    let path = if prefix.is_empty() { e.path } else { fields::join(prefix, &e.path) };
    ManifestError { document, kind, name, path, message: e.message }
}

fn parse_document(v: &Value, document: usize, out: &mut Vec<Resource>) -> Result<(), ManifestError> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "List" || kind.ends_with("List") {
        let item_kind = match kind.strip_suffix("List") {
            Some("") | None => None,
            Some(k) => Some(
                Kind::ALL
                    .into_iter()
                    .find(|x| x.name() == k)
                    .ok_or_else(|| with_context(kind_error(k, "kind"), document, "", v))?,
            ),
        };
        let list = Obj::new(v, "", &["apiVersion", "kind", "metadata", "items"], &[])
            .and_then(|o| check_api_version(&o).map(|_| o))
            .and_then(|o| o.list("items"))
            .map_err(|e| with_context(e, document, "", v))?;
        for (path, item) in list {
            let given = item.get("kind").and_then(Value::as_str);
            if let (Some(k), Some(given)) = (item_kind, given) {
                if given != k.name() {
                    return Err(with_context(
                        FieldError { path: "kind".into(), message: format!("a {given} in a {k}List") },
                        document,
                        &path,
                        item,
                    ));
                }
            }
            out.push(parse_value(item, document, &path, item_kind)?);
        }
        return Ok(());
    }
    out.push(parse_value(v, document, "", None)?);
    Ok(())
}

fn kind_error(k: &str, path: &str) -> FieldError {
    let valid = Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
    FieldError { path: path.into(), message: format!("'{k}' is not a kind vrouter stores; valid kinds: {valid}") }
}

fn check_api_version(o: &Obj) -> FResult<()> {
    match o.str("apiVersion")? {
        Some(API_VERSION) => Ok(()),
        Some(other) => err(o.field("apiVersion"), format!("'{other}' is not supported; valid value: {API_VERSION}")),
        None => err(o.field("apiVersion"), format!("is required: {API_VERSION}")),
    }
}

/// One resource from its JSON value. `default_kind` fills a missing `kind` (items of a typed
/// list, stored values).
fn parse_value(
    v: &Value,
    document: usize,
    prefix: &str,
    default_kind: Option<Kind>,
) -> Result<Resource, ManifestError> {
    parse_resource(v, default_kind).map_err(|e| with_context(e, document, prefix, v))
}

fn parse_resource(v: &Value, default_kind: Option<Kind>) -> FResult<Resource> {
    let o = Obj::new(
        v,
        "",
        &["apiVersion", "kind", "metadata", "spec"],
        &[("status", "status is written by the system, not applied; remove it")],
    )?;
    let kind = match (o.str("kind")?, default_kind) {
        (Some(k), _) => Kind::ALL.into_iter().find(|x| x.name() == k).ok_or_else(|| kind_error(k, "kind"))?,
        (None, Some(k)) => k,
        (None, None) => return err("kind", format!("is required; valid kinds: {}", kind_list())),
    };
    if o.has("apiVersion") || default_kind.is_none() {
        check_api_version(&o)?;
    }
    let metadata = parse_metadata(o.get("metadata"), kind)?;
    let spec = o.get("spec");
    Ok(match kind {
        Kind::Node => Resource::Node(Node { spec: spec::parse_node(spec)?, metadata }),
        Kind::IpPool => Resource::IpPool(IpPool { spec: spec::parse_ippool(spec)?, metadata }),
        Kind::WorkloadEndpoint => {
            Resource::WorkloadEndpoint(WorkloadEndpoint { spec: spec::parse_wep(spec)?, metadata })
        }
        Kind::NetworkPolicy => {
            Resource::NetworkPolicy(NetworkPolicy { spec: policy::parse_policy(spec, false)?, metadata })
        }
        Kind::GlobalNetworkPolicy => {
            Resource::GlobalNetworkPolicy(GlobalNetworkPolicy { spec: policy::parse_policy(spec, true)?, metadata })
        }
        Kind::Profile => Resource::Profile(Profile { spec: spec::parse_profile(spec)?, metadata }),
        Kind::BgpConfiguration => Resource::BgpConfiguration(BgpConfiguration {
            spec: bgp::parse_bgp_configuration(spec, &metadata.name)?,
            metadata,
        }),
        Kind::BgpPeer => Resource::BgpPeer(BgpPeer { spec: bgp::parse_bgp_peer(spec)?, metadata }),
    })
}

fn kind_list() -> String {
    Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
