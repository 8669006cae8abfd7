//! The `vrouterctl` binary's datastore commands against a real etcd (`testing::Etcd`): what a
//! calicoctl user does (apply, create, replace, get, delete, ipam), and what they are told when
//! something is refused or etcd is away. Each test runs the binary as a user would and checks
//! both its output and what etcd then holds.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output as ProcOutput, Stdio};
use std::time::{Duration, Instant};

use vrouter_cluster::datastore::Datastore;
use vrouter_cluster::ipam::{self, Attrs, PoolRef};
use vrouter_cluster::resource::{Kind, Resource};
use vrouter_cluster::store::Store;
use vrouter_cluster::testing::Etcd;

/// The manifests a calicoctl user would apply: every kind vrouter takes from a user.
const MANIFESTS: &str = "
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-a
spec:
  cidr: 10.65.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: false
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-db-egress
spec:
  order: 10
  selector: role == 'db'
  types: [Egress]
  egress:
  - action: Deny
    protocol: TCP
    destination:
      notNets: [10.65.0.0/16]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-web
  namespace: shop
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: app in {'web', 'api'}
    destination:
      ports: [5432, '8000:8080']
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: kns.shop
spec:
  labelsToApply:
    team: blue
---
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-7
  labels:
    rack: r1
spec:
  bgp:
    ipv4Address: 192.168.7.7/24
    asNumber: 64512
";

/// A scratch directory for manifest files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vrouterctl-ds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?} after {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.took, self.stdout, self.stderr)
    }
}

/// Runs vrouterctl with `env` added (and ETCD_ENDPOINTS / VROUTER_SOCKET removed unless given).
fn ctl_env(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vrouterctl"));
    cmd.env_remove("ETCD_ENDPOINTS").env_remove("VROUTER_SOCKET").args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let out: ProcOutput = cmd.output().expect("run vrouterctl");
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t.elapsed(),
    }
}

/// Runs vrouterctl with `input` on its stdin.
fn ctl_stdin(etcd: &Etcd, args: &[&str], input: &str) -> Run {
    use std::io::Write;
    let ep = etcd.endpoints().join(",");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vrouterctl"))
        .env_remove("ETCD_ENDPOINTS")
        .env_remove("VROUTER_SOCKET")
        .args(["--etcd-endpoints", ep.as_str()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vrouterctl");
    let t = Instant::now();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t.elapsed(),
    }
}

/// Runs vrouterctl against `etcd` (`--etcd-endpoints`).
fn ctl(etcd: &Etcd, args: &[&str]) -> Run {
    let ep = etcd.endpoints().join(",");
    let mut all = vec!["--etcd-endpoints", ep.as_str()];
    all.extend_from_slice(args);
    ctl_env(&[], &all)
}

fn ok(r: Run) -> Run {
    assert!(r.ok, "{r:?}");
    r
}

fn refused(r: Run) -> Run {
    assert!(!r.ok, "accepted: {r:?}");
    r
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// What etcd holds, read directly (not through the binary under test).
fn stored(etcd: &Etcd, kind: Kind, ns: Option<&str>, name: &str) -> Option<Resource> {
    rt().block_on(async {
        let ds = Datastore::new(Store::connect(&etcd.endpoints()).await.unwrap());
        ds.get(kind, ns, name).await.unwrap()
    })
}

fn count(etcd: &Etcd, prefix: &str) -> usize {
    rt().block_on(async { Store::connect(&etcd.endpoints()).await.unwrap().list(prefix).await.unwrap().0.len() })
}

const RESOURCES: &str = "/calico/resources/";

#[test]
fn apply_writes_every_document_and_a_second_apply_changes_nothing() {
    let etcd = Etcd::start();
    let dir = Dir::new("apply");
    let f = dir.file("all.yaml", MANIFESTS);

    let r = ok(ctl(&etcd, &["apply", "-f", &f]));
    for line in [
        "IPPool 'pool-a' created",
        "GlobalNetworkPolicy 'deny-db-egress' created",
        "NetworkPolicy 'shop/allow-web' created",
        "Profile 'kns.shop' created",
        "Node 'node-7' created",
    ] {
        assert!(r.stdout.contains(line), "'{line}' missing: {r:?}");
    }
    assert!(r.stdout.contains("5 of 5 resource(s) written to the datastore at http://127.0.0.1:"), "{r:?}");
    assert_eq!(count(&etcd, RESOURCES), 5);
    let Some(Resource::IpPool(p)) = stored(&etcd, Kind::IpPool, None, "pool-a") else { panic!("pool-a not stored") };
    assert_eq!((p.spec.cidr.to_string(), p.spec.block_size), ("10.65.0.0/16".into(), 26));
    assert!(stored(&etcd, Kind::NetworkPolicy, Some("shop"), "allow-web").is_some());
    let rv_before = stored(&etcd, Kind::Node, None, "node-7").unwrap().resource_version();

    let r = ok(ctl(&etcd, &["apply", "-f", &f]));
    assert_eq!(r.stdout.matches(" unchanged (resourceVersion ").count(), 5, "{r:?}");
    assert!(r.stdout.contains("0 of 5 resource(s) written to the datastore"), "{r:?}");
    assert_eq!(stored(&etcd, Kind::Node, None, "node-7").unwrap().resource_version(), rv_before, "not rewritten");

    // A change to one document updates that one only.
    let g = dir.file("changed.yaml", &MANIFESTS.replace("order: 10", "order: 20"));
    let r = ok(ctl(&etcd, &["apply", "-f", &g]));
    assert!(r.stdout.contains("GlobalNetworkPolicy 'deny-db-egress' updated"), "{r:?}");
    assert!(r.stdout.contains("1 of 5 resource(s) written"), "{r:?}");

    // --json says the same, machine-readably.
    let r = ok(ctl(&etcd, &["--json", "apply", "-f", &g]));
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["datastore"], etcd.endpoints().join(","));
    assert_eq!(v["resources"].as_array().unwrap().len(), 5);
    assert!(v["resources"].as_array().unwrap().iter().all(|x| x["result"] == "unchanged"), "{v}");
}

#[test]
fn apply_takes_json_a_json_list_and_stdin() {
    let etcd = Etcd::start();
    let dir = Dir::new("json");
    let one = dir.file(
        "pool.json",
        r#"{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"pj"},"spec":{"cidr":"10.70.0.0/16","blockSize":28}}"#,
    );
    let r = ok(ctl(&etcd, &["apply", "-f", &one]));
    assert!(r.stdout.contains("IPPool 'pj' created") && r.stdout.contains("datastore"), "{r:?}");
    let Some(Resource::IpPool(p)) = stored(&etcd, Kind::IpPool, None, "pj") else { panic!() };
    assert_eq!(p.spec.block_size, 28);

    let list = dir.file(
        "list.json",
        r#"{"apiVersion":"projectcalico.org/v3","kind":"ProfileList","items":[
            {"apiVersion":"projectcalico.org/v3","kind":"Profile","metadata":{"name":"kns.a"},"spec":{"labelsToApply":{"x":"1"}}},
            {"apiVersion":"projectcalico.org/v3","kind":"Profile","metadata":{"name":"kns.b"}}]}"#,
    );
    let r = ok(ctl(&etcd, &["apply", "-f", &list]));
    assert!(r.stdout.contains("Profile 'kns.a' created") && r.stdout.contains("Profile 'kns.b' created"), "{r:?}");

    // `-f -`: apply and create read stdin.
    let r = ctl_stdin(&etcd, &["apply", "-f", "-"], MANIFESTS);
    assert!(r.ok && r.stdout.contains("5 of 5 resource(s) written to the datastore"), "{r:?}");
    let r = ctl_stdin(&etcd, &["create", "-f", "-"], MANIFESTS);
    assert!(!r.ok && r.stderr.contains("IPPool 'pool-a' already exists"), "{r:?}");
}

#[test]
fn a_validation_error_names_document_field_and_valid_values_and_writes_nothing() {
    let etcd = Etcd::start();
    let dir = Dir::new("invalid");
    // The first document is wrong; the other four are fine.
    let bad = MANIFESTS.replace("ipipMode: CrossSubnet", "ipipMode: Sometimes");
    let f = dir.file("bad.yaml", &bad);
    let r = refused(ctl(&etcd, &["apply", "-f", &f]));
    assert!(r.stderr.contains(&f), "names the file: {r:?}");
    assert!(r.stderr.contains("document 1"), "names the document: {r:?}");
    assert!(r.stderr.contains("IPPool 'pool-a'"), "names the resource: {r:?}");
    assert!(r.stderr.contains("spec.ipipMode"), "names the field path: {r:?}");
    for v in ["Always", "CrossSubnet", "Never"] {
        assert!(r.stderr.contains(v), "lists the valid value {v}: {r:?}");
    }
    assert_eq!(count(&etcd, RESOURCES), 0, "nothing of the file written");

    // An error in a later document: still nothing written, and the document is named.
    let f = dir.file("bad4.yaml", &MANIFESTS.replace("types: [Egress]", "types: [Sideways]"));
    let r = refused(ctl(&etcd, &["apply", "-f", &f]));
    assert!(r.stderr.contains("document 2") && r.stderr.contains("spec.types"), "{r:?}");
    assert!(r.stderr.contains("Ingress") && r.stderr.contains("Egress"), "valid values: {r:?}");
    assert_eq!(count(&etcd, RESOURCES), 0);

    // A Calico field vrouter does not support is refused by name, not ignored.
    let f = dir.file("vxlan.yaml", &MANIFESTS.replace("natOutgoing: false", "natOutgoing: false\n  vxlanMode: Always"));
    let r = refused(ctl(&etcd, &["apply", "-f", &f]));
    assert!(r.stderr.contains("vxlanMode"), "{r:?}");
    assert_eq!(count(&etcd, RESOURCES), 0);
}

#[test]
fn get_output_applies_back_unchanged_and_tables_have_headers() {
    let etcd = Etcd::start();
    let dir = Dir::new("get");
    ok(ctl(&etcd, &["apply", "-f", &dir.file("all.yaml", MANIFESTS)]));

    ok(ctl(
        &etcd,
        &[
            "apply",
            "-f",
            &dir.file(
                "wep.yaml",
                &wep("node-7", "web", "cid-web", "10.65.0.9".parse().unwrap())
                    .replace("namespace: default", "namespace: shop"),
            ),
        ],
    ));

    // Round trips: each kind's YAML (a List) and one resource's JSON.
    for kind in ["ippools", "gnp", "networkpolicies", "profiles", "nodes", "wep"] {
        let args: Vec<&str> = match kind {
            "networkpolicies" => vec!["get", kind, "-n", "shop", "-o", "yaml"],
            "wep" => vec!["get", kind, "-A", "-o", "yaml"],
            _ => vec!["get", kind, "-o", "yaml"],
        };
        let y = ok(ctl(&etcd, &args));
        assert!(y.stdout.contains("resourceVersion"), "{y:?}");
        let back = dir.file(&format!("{kind}.yaml"), &y.stdout);
        let r = ok(ctl(&etcd, &["apply", "-f", &back]));
        assert!(r.stdout.contains(" unchanged ") && !r.stdout.contains(" updated "), "{kind}: {r:?}");
        assert!(r.stdout.contains("0 of 1 resource(s) written"), "{kind}: {r:?}");
    }
    let j = ok(ctl(&etcd, &["get", "ippool", "pool-a", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!((v["kind"].as_str(), v["spec"]["cidr"].as_str()), (Some("IPPool"), Some("10.65.0.0/16")));
    assert_eq!(v["spec"]["ipipMode"], "CrossSubnet");
    assert!(v["metadata"]["resourceVersion"].as_str().unwrap().parse::<i64>().unwrap() > 0);
    let r = ok(ctl(&etcd, &["apply", "-f", &dir.file("pool.json", &j.stdout)]));
    assert!(r.stdout.contains("IPPool 'pool-a' unchanged"), "{r:?}");

    // Tables.
    let t = ok(ctl(&etcd, &["get", "ippools"]));
    let header = t.stdout.lines().next().unwrap();
    for h in ["NAME", "CIDR", "BLOCKSIZE", "IPIPMODE", "NATOUTGOING", "DISABLED", "SELECTOR"] {
        assert!(header.contains(h), "{t:?}");
    }
    assert!(t.stdout.lines().nth(1).unwrap().contains("pool-a") && t.stdout.contains("10.65.0.0/16"), "{t:?}");
    let t = ok(ctl(&etcd, &["get", "np", "-A"]));
    assert!(t.stdout.starts_with("NAMESPACE") && t.stdout.contains("shop") && t.stdout.contains("allow-web"), "{t:?}");
    let t = ok(ctl(&etcd, &["get", "wep", "-n", "shop"]));
    assert!(
        t.stdout.starts_with("NAMESPACE") && t.stdout.contains("node-7-k8s-web-eth0") && t.stdout.contains("10.65.0.9"),
        "{t:?}"
    );
    let t = ok(ctl(&etcd, &["get", "nodes"]));
    assert!(t.stdout.contains("192.168.7.7") && t.stdout.contains("64512"), "{t:?}");
    // The default namespace has no NetworkPolicy: an empty list, not an error.
    let t = ok(ctl(&etcd, &["get", "networkpolicy"]));
    assert!(!t.stdout.contains("allow-web"), "{t:?}");
    // A missing one is an error naming it.
    let r = refused(ctl(&etcd, &["get", "gnp", "nope"]));
    assert!(r.stderr.contains("GlobalNetworkPolicy 'nope' does not exist"), "{r:?}");
    let r = refused(ctl(&etcd, &["get", "frobs"]));
    assert!(r.stderr.contains("unknown resource kind 'frobs'") && r.stderr.contains("gnp"), "{r:?}");
}

#[test]
fn create_replace_and_stale_resource_versions_are_refused_with_both_versions() {
    let etcd = Etcd::start();
    let dir = Dir::new("cas");
    let pool = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p1}\nspec: {cidr: 10.80.0.0/16}\n";
    let f = dir.file("p1.yaml", pool);

    // replace of a missing resource: refused, nothing written.
    let r = refused(ctl(&etcd, &["replace", "-f", &f]));
    assert!(r.stderr.contains("IPPool 'p1' does not exist"), "{r:?}");
    assert!(stored(&etcd, Kind::IpPool, None, "p1").is_none());
    let r = ok(ctl(&etcd, &["create", "-f", &f]));
    assert!(r.stdout.contains("IPPool 'p1' created"), "{r:?}");
    // create of an existing one: refused.
    let r = refused(ctl(&etcd, &["create", "-f", &f]));
    assert!(r.stderr.contains("IPPool 'p1' already exists"), "{r:?}");

    // A read-modify-write with the resourceVersion read: accepted once, then stale.
    let y = ok(ctl(&etcd, &["get", "ippool", "p1", "-o", "yaml"])).stdout;
    let old_rv = stored(&etcd, Kind::IpPool, None, "p1").unwrap().resource_version().unwrap();
    let edited = dir.file("p1-ipip.yaml", &y.replace("ipipMode: Never", "ipipMode: Always"));
    assert_ne!(std::fs::read_to_string(&edited).unwrap(), y, "the edit applies to get's output");
    let r = ok(ctl(&etcd, &["replace", "-f", &edited]));
    assert!(r.stdout.contains("IPPool 'p1' updated"), "{r:?}");
    let new_rv = stored(&etcd, Kind::IpPool, None, "p1").unwrap().resource_version().unwrap();
    assert!(new_rv > old_rv);

    // The same file again carries the old version: refused, naming both.
    let stale = dir.file(
        "p1-stale.yaml",
        &y.replace("ipipMode: Never", "ipipMode: Always").replace("disabled: false", "disabled: true"),
    );
    for verb in ["replace", "apply"] {
        let r = refused(ctl(&etcd, &[verb, "-f", &stale]));
        assert!(r.stderr.contains(&format!("resourceVersion {old_rv} is stale")), "{verb}: {r:?}");
        assert!(r.stderr.contains(&format!("now at {new_rv}")), "{verb}: {r:?}");
        assert_eq!(r.stderr.matches("IPPool 'p1'").count(), 1, "named once: {r:?}");
    }
    let Some(Resource::IpPool(p)) = stored(&etcd, Kind::IpPool, None, "p1") else { panic!() };
    assert!(!p.spec.disabled && format!("{:?}", p.spec.ipip_mode) == "Always", "the stale write changed nothing");
    // A refusal the datastore makes (an overlapping pool) stops the file at that document:
    // the output says which were written, and the exit status is 1.
    let two = dir.file(
        "two.yaml",
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p2}\nspec: {cidr: 10.81.0.0/16}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p3}\nspec: {cidr: 10.80.128.0/17}\n",
    );
    let r = refused(ctl(&etcd, &["apply", "-f", &two]));
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("IPPool 'p2' created") && r.stdout.contains("1 of 2 resource(s) written"), "{r:?}");
    assert!(r.stderr.contains("p3") && r.stderr.contains("overlaps IPPool 'p1'"), "{r:?}");
    assert!(stored(&etcd, Kind::IpPool, None, "p3").is_none());

    // Deleted since: the message says so.
    ok(ctl(&etcd, &["delete", "ippool", "p1"]));
    let r = refused(ctl(&etcd, &["apply", "-f", &stale]));
    assert!(r.stderr.contains(&format!("resourceVersion {old_rv} is stale")) && r.stderr.contains("deleted"), "{r:?}");
}

#[test]
fn delete_by_name_by_file_and_with_skip_not_exists_using_calicoctl_spellings() {
    let etcd = Etcd::start();
    let dir = Dir::new("delete");
    let all = dir.file("all.yaml", MANIFESTS);
    ok(ctl(&etcd, &["apply", "-f", &all]));

    let r = ok(ctl(&etcd, &["delete", "gnp", "deny-db-egress"]));
    assert!(r.stdout.contains("GlobalNetworkPolicy 'deny-db-egress' deleted"), "{r:?}");
    assert!(stored(&etcd, Kind::GlobalNetworkPolicy, None, "deny-db-egress").is_none());
    let r = ok(ctl(&etcd, &["delete", "netpol", "allow-web", "-n", "shop"]));
    assert!(r.stdout.contains("NetworkPolicy 'shop/allow-web' deleted"), "{r:?}");
    // Missing: an error, unless --skip-not-exists.
    let r = refused(ctl(&etcd, &["delete", "globalnetworkpolicies", "deny-db-egress"]));
    assert!(r.stderr.contains("'deny-db-egress' does not exist"), "{r:?}");
    let r = ok(ctl(&etcd, &["delete", "gnp", "deny-db-egress", "--skip-not-exists"]));
    assert!(r.stdout.contains("does not exist (skipped)"), "{r:?}");

    // By file: the rest goes; the two already gone are errors unless skipped.
    let r = refused(ctl(&etcd, &["delete", "-f", &all]));
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    assert_eq!(count(&etcd, RESOURCES), 0, "the others were deleted");
    ok(ctl(&etcd, &["apply", "-f", &all]));
    let r = ok(ctl(&etcd, &["delete", "-f", &all, "--skip-not-exists"]));
    assert_eq!(r.stdout.matches(" deleted").count(), 5, "{r:?}");
    assert_eq!(count(&etcd, RESOURCES), 0);

    // delete -f of `get -o yaml` output: its resourceVersion must still be current.
    ok(ctl(&etcd, &["apply", "-f", &all]));
    let y = dir.file("gnp.yaml", &ok(ctl(&etcd, &["get", "gnp", "deny-db-egress", "-o", "yaml"])).stdout);
    let old_rv = stored(&etcd, Kind::GlobalNetworkPolicy, None, "deny-db-egress").unwrap().resource_version().unwrap();
    ok(ctl(&etcd, &["apply", "-f", &dir.file("changed.yaml", &MANIFESTS.replace("order: 10", "order: 11"))]));
    let r = refused(ctl(&etcd, &["delete", "-f", &y]));
    assert!(r.stderr.contains(&format!("resourceVersion {old_rv} is stale")), "{r:?}");
    assert!(stored(&etcd, Kind::GlobalNetworkPolicy, None, "deny-db-egress").is_some(), "not deleted");
    let y = dir.file("gnp2.yaml", &ok(ctl(&etcd, &["get", "gnp", "deny-db-egress", "-o", "yaml"])).stdout);
    ok(ctl(&etcd, &["delete", "-f", &y]));
    assert!(stored(&etcd, Kind::GlobalNetworkPolicy, None, "deny-db-egress").is_none());
    ok(ctl(&etcd, &["delete", "-f", &all, "--skip-not-exists"]));

    // Spellings of every kind.
    ok(ctl(&etcd, &["apply", "-f", &all]));
    for (spelling, name) in
        [("ippools", "pool-a"), ("IPPool", "pool-a"), ("gnps", "deny-db-egress"), ("pro", "kns.shop"), ("no", "node-7")]
    {
        ok(ctl(&etcd, &["get", spelling, name]));
    }
    ok(ctl(&etcd, &["get", "wep", "-A"]));
    ok(ctl(&etcd, &["get", "workloadendpoints"]));
}

#[test]
fn etcd_endpoints_come_from_the_environment() {
    let etcd = Etcd::start();
    let dir = Dir::new("env");
    let f = dir.file("p.yaml", "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: kns.env}\n");
    let ep = etcd.endpoints().join(",");
    let r = ctl_env(&[("ETCD_ENDPOINTS", &ep)], &["apply", "-f", &f]);
    assert!(r.ok && r.stdout.contains(&format!("datastore at {ep}")), "{r:?}");
    assert!(stored(&etcd, Kind::Profile, None, "kns.env").is_some());
    let r = ctl_env(&[("ETCD_ENDPOINTS", &ep)], &["get", "profiles"]);
    assert!(r.ok && r.stdout.contains("kns.env"), "{r:?}");
    // --etcd-endpoints wins over the environment.
    let r = ctl_env(&[("ETCD_ENDPOINTS", "http://127.0.0.1:1")], &["--etcd-endpoints", &ep, "get", "profiles"]);
    assert!(r.ok && r.stdout.contains("kns.env"), "{r:?}");
}

#[test]
fn with_etcd_down_commands_fail_clearly_and_promptly() {
    let mut etcd = Etcd::start();
    let ep = etcd.endpoints()[0].clone();
    let dir = Dir::new("down");
    let f = dir.file("all.yaml", MANIFESTS);
    etcd.kill();
    for args in [
        vec!["apply", "-f", f.as_str()],
        vec!["get", "ippools"],
        vec!["delete", "gnp", "x"],
        vec!["ipam", "show"],
        vec!["ipam", "check"],
    ] {
        let r = refused(ctl(&etcd, &args));
        assert!(r.took < Duration::from_secs(12), "{args:?} took {:?}", r.took);
        assert!(r.stderr.contains(&ep), "{args:?}: the error names the endpoint: {r:?}");
        assert!(r.stderr.to_lowercase().contains("etcd"), "{args:?}: says it is etcd: {r:?}");
        assert!(r.stdout.is_empty() || !r.stdout.contains("created"), "{args:?}: {r:?}");
    }
    // Back: the same commands work.
    etcd.restart();
    ok(ctl(&etcd, &["apply", "-f", &f]));

    // Something that accepts connections and never answers (a hung etcd): still bounded.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = format!("http://{}", silent.local_addr().unwrap());
    let r = refused(ctl_env(&[("ETCD_ENDPOINTS", &ep)], &["get", "ippools"]));
    assert!(r.took < Duration::from_secs(12), "took {:?}", r.took);
    assert!(r.stderr.contains(&ep), "{r:?}");
}

#[test]
fn a_node_toml_goes_to_the_node_socket_not_the_datastore() {
    let etcd = Etcd::start();
    let dir = Dir::new("toml");
    let toml = dir.file(
        "node.toml",
        "[node]\nname = \"n1\"\nip = \"192.168.1.1\"\nsubnet = \"192.168.1.0/24\"\n\n[workers]\ncores = [0]\n",
    );
    let sock = dir.0.join("no-daemon.sock").display().to_string();
    let r = refused(ctl(&etcd, &["-s", &sock, "apply", "-f", &toml]));
    assert!(r.stderr.contains(&format!("applying {toml} to the node at {sock}")), "says which: {r:?}");
    assert!(r.stderr.matches(&sock).count() >= 2, "the error names the socket: {r:?}");
    assert!(!r.stdout.contains("datastore"), "{r:?}");
    assert_eq!(count(&etcd, "/calico/"), 0);
    // The same content as YAML manifests goes to etcd, with no daemon needed.
    let y = dir.file("p.yaml", "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: kns.x}\n");
    let r = ok(ctl(&etcd, &["-s", &sock, "apply", "-f", &y]));
    assert!(r.stdout.contains("datastore") && !r.stderr.contains(&sock), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// ipam
// ---------------------------------------------------------------------------------------

fn pool_ref() -> Vec<PoolRef> {
    vec![PoolRef { cidr: "10.90.0.0/24".parse().unwrap(), block_size: 26 }]
}

fn assign(etcd: &Etcd, node: &str, handle: &str, pod: &str) -> Ipv4Addr {
    rt().block_on(async {
        let store = Store::connect(&etcd.endpoints()).await.unwrap();
        let attrs = Attrs { node: node.into(), namespace: Some("default".into()), pod: Some(pod.into()) };
        ipam::assign(&store, node, handle, &pool_ref(), &attrs).await.unwrap()
    })
}

fn wep(node: &str, pod: &str, handle: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {{name: {node}-k8s-{pod}-eth0, namespace: default, labels: {{app: {pod}}}}}
spec:
  node: {node}
  orchestrator: k8s
  endpoint: eth0
  pod: {pod}
  containerID: '{handle}'
  interfaceName: vr{pod}
  mac: 02:00:00:00:00:01
  ipNetworks: [{ip}/32]
"
    )
}

#[test]
fn ipam_show_release_and_check_find_a_planted_leak() {
    let etcd = Etcd::start();
    let dir = Dir::new("ipam");
    ok(ctl(
        &etcd,
        &[
            "apply",
            "-f",
            &dir.file(
                "pool.yaml",
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.90.0.0/24}\n",
            ),
        ],
    ));
    // Two pods with endpoints, and one address allocated with no endpoint (a leak: a pod
    // deleted without a CNI DEL).
    let a = assign(&etcd, "n1", "cid-a", "a");
    let b = assign(&etcd, "n1", "cid-b", "b");
    let leak = assign(&etcd, "n2", "cid-leak", "gone");
    ok(ctl(
        &etcd,
        &[
            "apply",
            "-f",
            &dir.file("weps.yaml", &format!("{}---\n{}", wep("n1", "a", "cid-a", a), wep("n1", "b", "cid-b", b))),
        ],
    ));

    // show: a block per node, with its use.
    let r = ok(ctl(&etcd, &["ipam", "show"]));
    assert!(r.stdout.starts_with("BLOCK") && r.stdout.contains("AFFINITY"), "{r:?}");
    let row = |node: &str| {
        r.stdout.lines().find(|l| l.contains(&format!("host:{node}"))).unwrap_or_else(|| panic!("{r:?}")).to_string()
    };
    assert!(row("n1").split_whitespace().any(|c| c == "2"), "n1's block holds 2: {r:?}");
    assert!(row("n2").split_whitespace().any(|c| c == "1"), "{r:?}");
    let r = ok(ctl(&etcd, &["ipam", "show", "--ip", &a.to_string()]));
    assert!(
        r.stdout.contains("allocated") && r.stdout.contains("handle cid-a") && r.stdout.contains("host:n1"),
        "{r:?}"
    );
    let r = ok(ctl(&etcd, &["ipam", "show", "--ip", "10.99.0.1"]));
    assert!(r.stdout.contains("in no IPAM block"), "{r:?}");
    let r = ok(ctl(&etcd, &["--json", "ipam", "show"]));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap().as_array().unwrap().len(), 2, "{r:?}");

    // check: the leak, by address and handle; exit status 1.
    let r = ctl(&etcd, &["ipam", "check"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains(&format!("leak: {leak} allocated to cid-leak")), "{r:?}");
    assert!(!r.stdout.contains(&a.to_string()) || !r.stdout.contains(&format!("leak: {a}")), "{r:?}");
    assert!(r.stdout.contains("3 addresses allocated, 2 endpoints"), "{r:?}");

    // release --ip frees the leak: clean again.
    let r = ok(ctl(&etcd, &["ipam", "release", "--ip", &leak.to_string()]));
    assert!(r.stdout.contains(&format!("released {leak}")), "{r:?}");
    let r = ok(ctl(&etcd, &["ipam", "show", "--ip", &leak.to_string()]));
    assert!(r.stdout.contains("free"), "{r:?}");
    let r = ok(ctl(&etcd, &["ipam", "check"]));
    assert!(r.stdout.contains("no problems found"), "{r:?}");

    // release --handle frees a pod's addresses (its endpoint now uses an unallocated one:
    // check says so); idempotent.
    let r = ok(ctl(&etcd, &["ipam", "release", "--handle", "cid-b"]));
    assert!(r.stdout.contains(&format!("released {b} (handle cid-b)")), "{r:?}");
    let r = ok(ctl(&etcd, &["ipam", "release", "--handle", "cid-b"]));
    assert!(r.stdout.contains("held no address"), "{r:?}");
    let r = ctl(&etcd, &["ipam", "check"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains(&format!("unallocated: endpoint cid-b uses {b}")), "{r:?}");
    let r = refused(ctl(&etcd, &["ipam", "release"]));
    assert!(r.stderr.contains("--ip") && r.stderr.contains("--handle"), "{r:?}");
}

#[test]
fn ipam_claim_gives_a_node_one_more_block_from_the_pools_that_select_it() {
    let etcd = Etcd::start();
    let dir = Dir::new("claim");
    let manifests = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.90.0.0/25}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: other}\nspec: {cidr: 10.91.0.0/24, nodeSelector: \"zone == 'b'\"}\n---\n\
         apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1, labels: {zone: a}}\nspec: {bgp: {ipv4Address: 192.168.1.10/24}}\n";
    ok(ctl(&etcd, &["apply", "-f", &dir.file("c.yaml", manifests)]));
    // Two /26 in the pool that selects n1 (not the zone b pool), then none left.
    let mut claimed = Vec::new();
    for _ in 0..2 {
        let r = ok(ctl(&etcd, &["ipam", "claim", "--node", "n1"]));
        let block = r.stdout.split_whitespace().nth(1).unwrap_or_else(|| panic!("{r:?}")).to_string();
        assert!(block.starts_with("10.90.0.") && block.ends_with("/26"), "{r:?}");
        claimed.push(block);
    }
    assert_ne!(claimed[0], claimed[1]);
    let r = ok(ctl(&etcd, &["ipam", "show"]));
    for b in &claimed {
        assert!(r.stdout.lines().any(|l| l.contains(b.as_str()) && l.contains("host:n1")), "{b}: {r:?}");
    }
    let r = refused(ctl(&etcd, &["ipam", "claim", "--node", "n1"]));
    assert!(!r.stderr.is_empty(), "the pool is full: {r:?}");
    let r = refused(ctl(&etcd, &["ipam", "claim", "--node", "nobody"]));
    assert!(r.stderr.contains("no Node named nobody"), "{r:?}");
}
