//! calicoctl's job: the cluster's resources in etcd (`apply`, `create`, `replace`, `get`,
//! `delete`) and its addresses (`ipam show|release|check`). The etcd endpoints come from
//! `--etcd-endpoints` or `ETCD_ENDPOINTS`, as calicoctl reads them.
//!
//! Every document of a file is checked before anything is written; then they are written in
//! order, each a compare-and-swap, and the output says what happened to each.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::Value;
use vrouter_cluster::datastore::{display_name, Datastore, DatastoreError, Written};
use vrouter_cluster::ipam;
use vrouter_cluster::resource::{parse_manifests, Kind, Resource};
use vrouter_cluster::store::Store;

use crate::{read_input, table, IpamCmd, Output};

pub use vrouter_cluster::resource::is_manifest;

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))
}

async fn connect(endpoints: &[String]) -> Result<Datastore, String> {
    Store::connect(endpoints).await.map(Datastore::new).map_err(|e| e.to_string())
}

/// The resources of a file, every document checked; errors name the file.
fn load(file: &Path, text: &str) -> Result<Vec<Resource>, String> {
    let rs = parse_manifests(text).map_err(|e| format!("{}: {e}", file.display()))?;
    if rs.is_empty() {
        return Err(format!("{}: no resources in it", file.display()));
    }
    Ok(rs)
}

#[derive(Clone, Copy, Debug)]
pub enum Verb {
    Apply,
    Create,
    Replace,
}

/// `apply|create|replace -f FILE` against the datastore. Ok(false): some document was
/// refused (the earlier ones were written; the output says which).
pub fn write(endpoints: &[String], file: &Path, text: Option<String>, verb: Verb, json: bool) -> Result<bool, String> {
    let text = match text {
        Some(t) => t,
        None => read_input(file)?,
    };
    let resources = load(file, &text)?;
    let rt = runtime()?;
    rt.block_on(async {
        let ds = connect(endpoints).await?;
        let mut done = Vec::new();
        let mut failed = None;
        for r in &resources {
            let res = match verb {
                Verb::Apply => ds.apply(r).await,
                Verb::Create => ds.create(r).await,
                Verb::Replace => ds.replace(r).await,
            };
            match res {
                Ok(w) => done.push((r, w)),
                Err(e) => {
                    // The datastore's own refusals name the resource; a store error does not.
                    failed = Some(match e {
                        DatastoreError::Store(_) => format!("{} '{}': {e}", r.kind(), r.display_name()),
                        e => e.to_string(),
                    });
                    break;
                }
            }
        }
        if json {
            let items: Vec<Value> = done
                .iter()
                .map(|(r, w)| {
                    serde_json::json!({"kind": r.kind().name(), "name": r.display_name(), "result": w.verb(), "resourceVersion": w.revision().to_string()})
                })
                .collect();
            println!("{}", serde_json::json!({"datastore": endpoints.join(","), "resources": items, "error": failed}));
        } else {
            for (r, w) in &done {
                println!("{} '{}' {} (resourceVersion {})", r.kind(), r.display_name(), w.verb(), w.revision());
            }
            println!(
                "{} of {} resource(s) written to the datastore at {}",
                done.iter().filter(|(_, w)| !matches!(w, Written::Unchanged(_))).count(),
                resources.len(),
                endpoints.join(",")
            );
        }
        match failed {
            Some(e) => {
                eprintln!("error: {e}");
                Ok(false)
            }
            None => Ok(true),
        }
    })
}

/// `get KIND [NAME]`.
pub fn get(
    endpoints: &[String],
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    all_namespaces: bool,
    output: Output,
) -> Result<bool, String> {
    let kind: Kind = kind.parse()?;
    let rt = runtime()?;
    rt.block_on(async {
        let ds = connect(endpoints).await?;
        let items = match name {
            Some(n) => match ds.get(kind, namespace, n).await.map_err(|e| e.to_string())? {
                Some(r) => vec![r],
                None => {
                    eprintln!("error: {}", DatastoreError::NotFound { kind, name: display_name(kind, namespace, n) });
                    return Ok(false);
                }
            },
            None => {
                let ns = match (all_namespaces, kind.namespaced()) {
                    (true, _) | (_, false) => None,
                    (false, true) => Some(namespace.unwrap_or("default")),
                };
                ds.list(kind, ns).await.map_err(|e| e.to_string())?
            }
        };
        print!("{}", render(kind, &items, name.is_some(), output)?);
        Ok(true)
    })
}

fn render(kind: Kind, items: &[Resource], single: bool, output: Output) -> Result<String, String> {
    let docs: Vec<Value> = items.iter().map(Resource::to_manifest).collect();
    let value = if single && docs.len() == 1 {
        docs[0].clone()
    } else {
        serde_json::json!({"apiVersion": vrouter_cluster::resource::API_VERSION, "kind": format!("{}List", kind.name()), "items": docs})
    };
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(&value).map_err(|e| e.to_string())? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(&value).map_err(|e| e.to_string())?,
        Output::Table => {
            let rows: Vec<Vec<String>> = items.iter().map(Resource::table_row).collect();
            table(kind.table_header(), &rows)
        }
    })
}

/// `delete KIND NAME` or `delete -f FILE`.
pub fn delete(
    endpoints: &[String],
    target: DeleteTarget,
    namespace: Option<&str>,
    skip_not_exists: bool,
) -> Result<bool, String> {
    let targets: Vec<(Kind, Option<String>, String, Option<i64>)> = match target {
        DeleteTarget::Named { kind, name } => {
            let kind: Kind = kind.parse()?;
            vec![(kind, namespace.map(str::to_string), name, None)]
        }
        DeleteTarget::File(file) => {
            let text = read_input(&file)?;
            load(&file, &text)?
                .into_iter()
                .map(|r| (r.kind(), r.namespace().map(str::to_string), r.name().to_string(), r.resource_version()))
                .collect()
        }
    };
    let rt = runtime()?;
    rt.block_on(async {
        let ds = connect(endpoints).await?;
        let mut ok = true;
        for (kind, ns, name, rv) in &targets {
            match ds.delete(*kind, ns.as_deref(), name, *rv).await {
                Ok(()) => println!("{kind} '{}' deleted", display_name(*kind, ns.as_deref(), name)),
                Err(DatastoreError::NotFound { .. }) if skip_not_exists => {
                    println!("{kind} '{}' does not exist (skipped)", display_name(*kind, ns.as_deref(), name))
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ok = false;
                }
            }
        }
        Ok(ok)
    })
}

pub enum DeleteTarget {
    Named { kind: String, name: String },
    File(std::path::PathBuf),
}

/// `ipam show|release|check`.
pub fn ipam(endpoints: &[String], cmd: &IpamCmd, json: bool) -> Result<bool, String> {
    let rt = runtime()?;
    rt.block_on(async {
        let ds = connect(endpoints).await?;
        let store = ds.store();
        match cmd {
            IpamCmd::Show { ip: Some(ip) } => show_ip(store, *ip, json).await,
            IpamCmd::Show { ip: None } => show_blocks(store, json).await,
            IpamCmd::Release { ip, handle } => release(store, *ip, handle.as_deref()).await,
            IpamCmd::Check => check(&ds, json).await,
            IpamCmd::Claim { node } => claim(&ds, node).await,
        }
    })
}

async fn claim(ds: &Datastore, node: &str) -> Result<bool, String> {
    let n = match ds.get(Kind::Node, None, node).await.map_err(|e| e.to_string())? {
        Some(Resource::Node(n)) => n,
        _ => return Err(format!("no Node named {node} in the datastore")),
    };
    let pools: Vec<ipam::PoolRef> = ds
        .list(Kind::IpPool, None)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|r| match r {
            Resource::IpPool(p) if p.spec.allocates_for(&n.metadata.labels) => {
                Some(ipam::PoolRef { cidr: p.spec.cidr, block_size: p.spec.block_size })
            }
            _ => None,
        })
        .collect();
    if pools.is_empty() {
        return Err(format!("no enabled IP pool selects node {node}"));
    }
    let block = ipam::claim_block(ds.store(), node, &pools).await.map_err(|e| e.to_string())?;
    println!("claimed {block} for node {node}");
    Ok(true)
}

async fn show_blocks(store: &Store, json: bool) -> Result<bool, String> {
    let blocks = ipam::show(store).await.map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&blocks).map_err(|e| e.to_string())?);
        return Ok(true);
    }
    let rows: Vec<Vec<String>> = blocks
        .iter()
        .map(|b| {
            let total = b.used + b.free;
            vec![
                b.cidr.to_string(),
                b.affinity.clone().unwrap_or_else(|| "-".into()),
                b.used.to_string(),
                b.free.to_string(),
                format!("{:.0}%", 100.0 * b.used as f64 / total.max(1) as f64),
            ]
        })
        .collect();
    print!("{}", table(&["BLOCK", "AFFINITY", "IN USE", "FREE", "USED"], &rows));
    Ok(true)
}

async fn show_ip(store: &Store, ip: Ipv4Addr, json: bool) -> Result<bool, String> {
    let info = ipam::show_ip(store, ip).await.map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info).map_err(|e| e.to_string())?);
    } else {
        println!("{info}");
    }
    Ok(true)
}

async fn release(store: &Store, ip: Option<Ipv4Addr>, handle: Option<&str>) -> Result<bool, String> {
    match (ip, handle) {
        (Some(ip), None) => {
            ipam::release_ip(store, ip).await.map_err(|e| e.to_string())?;
            println!("released {ip}");
        }
        (None, Some(h)) => {
            let ips = ipam::release(store, h).await.map_err(|e| e.to_string())?;
            if ips.is_empty() {
                println!("handle {h} held no address");
            } else {
                let list: Vec<String> = ips.iter().map(|a| a.to_string()).collect();
                println!("released {} (handle {h})", list.join(", "));
            }
        }
        _ => return Err("give exactly one of --ip ADDRESS or --handle ID".into()),
    }
    Ok(true)
}

async fn check(ds: &Datastore, json: bool) -> Result<bool, String> {
    let weps = ds.list(Kind::WorkloadEndpoint, None).await.map_err(|e| e.to_string())?;
    let mut in_use = Vec::new();
    for r in &weps {
        if let Resource::WorkloadEndpoint(w) = r {
            let handle = w.spec.container_id.clone().unwrap_or_else(|| r.display_name());
            for n in &w.spec.ip_networks {
                in_use.push((Ipv4Addr::from(n.addr()), handle.clone()));
            }
        }
    }
    let report = ipam::check(ds.store(), &in_use).await.map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        print!("{report}");
    }
    Ok(report.is_clean())
}
