//! IPAM against a real etcd: the issue's 3 agents x 200 concurrent allocations (in a roomy
//! pool, and in a tight one where nodes must borrow from each other's blocks), idempotence,
//! release, borrowing, exhaustion, and `check` finding planted problems.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use vrouter_cluster::ipam::{self, Attrs, IpInfo, IpamError, PoolRef};
use vrouter_cluster::store::{keys, Store};
use vrouter_cluster::testing::Etcd;
use vrouter_types::Ipv4Prefix;

fn pool(cidr: &str, block_size: u8) -> PoolRef {
    PoolRef { cidr: cidr.parse().unwrap(), block_size }
}
fn attrs(node: &str) -> Attrs {
    Attrs { node: node.into(), namespace: Some("default".into()), pod: None }
}
fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// 3 nodes, each with its own Store (connection), 200 concurrent assigns each. Returns
/// (node, handle, address) for all 600.
async fn three_by_two_hundred(etcd: &Etcd, pools: Vec<PoolRef>) -> Vec<(String, String, Ipv4Addr)> {
    let mut tasks = Vec::new();
    for n in 0..3 {
        let store = Store::connect(&etcd.endpoints()).await.unwrap();
        let node = format!("node{n}");
        for i in 0..200 {
            let (store, node, pools) = (store.clone(), node.clone(), pools.clone());
            tasks.push(tokio::spawn(async move {
                let handle = format!("k8s-pod-network.{node}-{i:03}");
                let a = ipam::assign(&store, &node, &handle, &pools, &attrs(&node)).await.unwrap();
                (node, handle, a)
            }));
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Every address distinct, every block's allocations exactly the handles' addresses, every
/// handle counting one address, `check` clean. Returns the blocks by CIDR.
async fn assert_consistent(store: &Store, got: &[(String, String, Ipv4Addr)]) -> BTreeMap<Ipv4Prefix, ipam::Block> {
    let distinct: BTreeSet<Ipv4Addr> = got.iter().map(|g| g.2).collect();
    assert_eq!(distinct.len(), got.len(), "an address was handed out twice");
    let blocks: BTreeMap<Ipv4Prefix, ipam::Block> =
        ipam::blocks(store).await.unwrap().into_iter().map(|b| (b.cidr, b)).collect();
    let mut in_blocks = BTreeMap::new();
    for b in blocks.values() {
        for o in 0..b.allocations.len() {
            if let Some(a) = b.handle_of(o) {
                assert!(in_blocks.insert(b.ip(o), a.handle_id.clone().unwrap()).is_none());
            }
        }
    }
    let expected: BTreeMap<Ipv4Addr, String> = got.iter().map(|(_, h, a)| (*a, h.clone())).collect();
    assert_eq!(in_blocks, expected, "the blocks hold exactly the assigned (address, handle) pairs");
    let handles = ipam::handles(store).await.unwrap();
    assert_eq!(handles.len(), got.len());
    for h in &handles {
        assert_eq!(h.block.values().sum::<u32>(), 1, "{h:?}");
    }
    let eps: Vec<(Ipv4Addr, String)> = got.iter().map(|(_, h, a)| (*a, h.clone())).collect();
    let report = ipam::check(store, &eps).await.unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.allocated, got.len());
    blocks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_by_200_concurrent_allocations_never_share_an_address() {
    let etcd = Etcd::start();
    let t = Instant::now();
    let got = three_by_two_hundred(&etcd, vec![pool("10.64.0.0/16", 26)]).await;
    eprintln!("600 concurrent allocations (3 nodes) in {:?}", t.elapsed());
    let store = Store::connect(&etcd.endpoints()).await.unwrap();
    let blocks = assert_consistent(&store, &got).await;
    // A roomy pool: every node allocates from its own blocks only (4 /26 each for 200 pods).
    for (node, _, a) in &got {
        let b = blocks.values().find(|b| b.cidr.contains(u32::from(*a))).unwrap();
        assert_eq!(b.affine_node(), Some(node.as_str()), "{a} of {node} is in {}", b.cidr);
        assert_eq!(b.handle_of(b.ordinal(*a).unwrap()).unwrap().secondary["node"], *node);
    }
    for n in 0..3 {
        let node = format!("node{n}");
        let affine = ipam::affine_blocks(&store, &node).await.unwrap();
        assert_eq!(affine.len(), 4, "{node}: {affine:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_by_200_in_a_tight_pool_borrow_without_sharing_an_address() {
    let etcd = Etcd::start();
    // 640 addresses in 10 blocks for 600 pods: nodes run out of blocks unevenly and borrow
    // from each other's blocks concurrently (cross-node compare-and-swap contention).
    let pools = vec![pool("10.70.0.0/23", 26), pool("10.71.0.0/25", 26)];
    let t = Instant::now();
    let got = three_by_two_hundred(&etcd, pools.clone()).await;
    eprintln!("600 concurrent allocations in a tight pool in {:?}", t.elapsed());
    let store = Store::connect(&etcd.endpoints()).await.unwrap();
    let blocks = assert_consistent(&store, &got).await;
    assert_eq!(blocks.len(), 10, "every block claimed");
    let borrowed = got
        .iter()
        .filter(|(node, _, a)| {
            let b = blocks.values().find(|b| b.cidr.contains(u32::from(*a))).unwrap();
            b.affine_node() != Some(node.as_str())
        })
        .count();
    eprintln!("{borrowed} of 600 addresses borrowed from another node's block");
    // 40 addresses left: the next 40 succeed (anyone's block), the 41st is exhaustion.
    for i in 0..40 {
        ipam::assign(&store, "node0", &format!("extra-{i}"), &pools, &attrs("node0")).await.unwrap();
    }
    let e = ipam::assign(&store, "node0", "one-too-many", &pools, &attrs("node0")).await.unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e:?}");
}

#[tokio::test]
async fn assign_is_idempotent_per_handle() {
    let etcd = Etcd::start();
    let s = Store::connect(&etcd.endpoints()).await.unwrap();
    let pools = [pool("10.80.0.0/24", 26)];
    let a = ipam::assign(&s, "n1", "h1", &pools, &attrs("n1")).await.unwrap();
    let b = ipam::assign(&s, "n1", "h1", &pools, &attrs("n1")).await.unwrap();
    assert_eq!(a, b, "a retried ADD gets the same address");
    let c = ipam::assign(&s, "n1", "h2", &pools, &attrs("n1")).await.unwrap();
    assert_ne!(a, c);
    let h = ipam::handles(&s).await.unwrap();
    assert_eq!(h.iter().map(|h| h.block.values().sum::<u32>()).collect::<Vec<_>>(), vec![1, 1]);
    match ipam::show_ip(&s, a).await.unwrap() {
        IpInfo::Allocated { handle, affinity, attributes, .. } => {
            assert_eq!(handle.as_deref(), Some("h1"));
            assert_eq!(affinity.as_deref(), Some("host:n1"));
            assert_eq!(attributes["node"], "n1");
            assert_eq!(attributes["namespace"], "default");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn release_frees_the_address_and_is_idempotent() {
    let etcd = Etcd::start();
    let s = Store::connect(&etcd.endpoints()).await.unwrap();
    let pools = [pool("10.81.0.0/24", 26)];
    let a = ipam::assign(&s, "n1", "h1", &pools, &attrs("n1")).await.unwrap();
    assert_eq!(ipam::release(&s, "h1").await.unwrap(), vec![a]);
    assert!(ipam::release(&s, "h1").await.unwrap().is_empty(), "a second DEL is a no-op");
    assert!(ipam::release(&s, "never-seen").await.unwrap().is_empty());
    assert!(s.get(&keys::handle("h1")).await.unwrap().is_none(), "handle deleted");
    assert!(matches!(ipam::show_ip(&s, a).await.unwrap(), IpInfo::Free { .. }));
    // The freed address goes to the back of the free list: the next pod gets another one.
    let b = ipam::assign(&s, "n1", "h2", &pools, &attrs("n1")).await.unwrap();
    assert_ne!(a, b);
    // Release by address, also idempotent, and the handle goes with its last address.
    ipam::release_ip(&s, b).await.unwrap();
    ipam::release_ip(&s, b).await.unwrap();
    ipam::release_ip(&s, ip("192.0.2.1")).await.unwrap();
    assert!(s.get(&keys::handle("h2")).await.unwrap().is_none());
    assert!(matches!(ipam::show_ip(&s, b).await.unwrap(), IpInfo::Free { .. }));
    assert!(matches!(ipam::show_ip(&s, ip("192.0.2.1")).await.unwrap(), IpInfo::Unknown { .. }));
    // Empty, but still n1's block.
    let show = ipam::show(&s).await.unwrap();
    assert_eq!(show.len(), 1);
    assert_eq!((show[0].affinity.as_deref(), show[0].used, show[0].free), (Some("host:n1"), 0, 64));
    assert!(ipam::check(&s, &[]).await.unwrap().is_clean());
}

#[tokio::test]
async fn a_node_borrows_when_every_block_is_claimed_and_the_owner_keeps_the_block() {
    let etcd = Etcd::start();
    let s = Store::connect(&etcd.endpoints()).await.unwrap();
    // Two blocks of 4.
    let pools = [pool("10.90.0.0/29", 30)];
    let a1 = ipam::assign(&s, "n1", "a1", &pools, &attrs("n1")).await.unwrap();
    let b1 = ipam::assign(&s, "n2", "b1", &pools, &attrs("n2")).await.unwrap();
    let n1_block = ipam::affine_blocks(&s, "n1").await.unwrap();
    let n2_block = ipam::affine_blocks(&s, "n2").await.unwrap();
    assert_eq!((n1_block.len(), n2_block.len()), (1, 1));
    assert!(n1_block[0].contains(u32::from(a1)) && n2_block[0].contains(u32::from(b1)));
    for h in ["a2", "a3", "a4"] {
        let a = ipam::assign(&s, "n1", h, &pools, &attrs("n1")).await.unwrap();
        assert!(n1_block[0].contains(u32::from(a)), "n1's own block first");
    }
    // n1's block is full and no block is unclaimed: n1 borrows from n2's.
    let borrowed = ipam::assign(&s, "n1", "a5", &pools, &attrs("n1")).await.unwrap();
    assert!(n2_block[0].contains(u32::from(borrowed)), "{borrowed} borrowed from {}", n2_block[0]);
    match ipam::show_ip(&s, borrowed).await.unwrap() {
        IpInfo::Allocated { affinity, attributes, .. } => {
            assert_eq!(affinity.as_deref(), Some("host:n2"), "the block stays n2's");
            assert_eq!(attributes["node"], "n1", "the address is n1's pod's");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ipam::affine_blocks(&s, "n1").await.unwrap(), n1_block, "borrowing claims nothing");
    // Releasing the block's last addresses (the borrowed one and n2's own) leaves it n2's.
    ipam::release(&s, "a5").await.unwrap();
    ipam::release(&s, "b1").await.unwrap();
    let blk = ipam::blocks(&s).await.unwrap().into_iter().find(|b| b.cidr == n2_block[0]).unwrap();
    assert_eq!((blk.used(), blk.affine_node()), (0, Some("n2")));
    assert_eq!(ipam::affine_blocks(&s, "n2").await.unwrap(), n2_block);
    let eps: Vec<(Ipv4Addr, String)> = Vec::new();
    let r = ipam::check(&s, &eps).await.unwrap();
    assert_eq!(r.leaks.len(), 4, "n1's four pods have no endpoints in this test: {r}");
    assert!(
        r.duplicates.is_empty() && r.orphan_handles.is_empty() && r.bad_counts.is_empty() && r.bad_blocks.is_empty()
    );
}

#[tokio::test]
async fn exhaustion_names_the_pools() {
    let etcd = Etcd::start();
    let s = Store::connect(&etcd.endpoints()).await.unwrap();
    let pools = [pool("10.91.0.0/30", 31), pool("10.92.0.0/31", 31)];
    for i in 0..6 {
        ipam::assign(&s, "n1", &format!("h{i}"), &pools, &attrs("n1")).await.unwrap();
    }
    let e = ipam::assign(&s, "n1", "h6", &pools, &attrs("n1")).await.unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("10.91.0.0/30") && msg.contains("10.92.0.0/31"), "{msg}");
    let e = ipam::assign(&s, "n1", "h7", &[], &attrs("n1")).await.unwrap_err();
    assert!(matches!(e, IpamError::NoPools { .. }), "{e:?}");
    let e = ipam::assign(&s, "n1", "h7", &[pool("10.93.0.0/24", 20)], &attrs("n1")).await.unwrap_err();
    assert!(e.to_string().contains("blockSize 20"), "{e}");
}

#[tokio::test]
async fn check_finds_a_planted_leak_duplicate_and_orphan_handle() {
    let etcd = Etcd::start();
    let s = Store::connect(&etcd.endpoints()).await.unwrap();
    let pools = [pool("10.94.0.0/24", 26)];
    let mut eps = Vec::new();
    for h in ["h1", "h2", "h3"] {
        eps.push((ipam::assign(&s, "n1", h, &pools, &attrs("n1")).await.unwrap(), h.to_string()));
    }
    assert!(ipam::check(&s, &eps).await.unwrap().is_clean());
    // A leak: h3's pod is gone but its address was never released.
    let leaked = eps.pop().unwrap();
    // A duplicate: a second endpoint claims h1's address.
    eps.push((eps[0].0, "h9".to_string()));
    // An orphan handle, written behind IPAM's back.
    s.create(&keys::handle("ghost"), br#"{"handleID":"ghost","block":{"10.94.0.0/26":1}}"#).await.unwrap();
    let r = ipam::check(&s, &eps).await.unwrap();
    assert_eq!(r.leaks, vec![(leaked.0, Some("h3".to_string()))], "{r}");
    assert_eq!(r.duplicates, vec![(eps[0].0, vec!["h1".to_string(), "h9".to_string()])], "{r}");
    assert_eq!(r.orphan_handles, vec!["ghost".to_string()], "{r}");
    let text = r.to_string();
    assert!(text.contains(&format!("leak: {}", leaked.0)) && text.contains("duplicate:"), "{text}");
    // A duplicate inside IPAM: an overlapping block holding h1's address for another handle.
    let overlapping = format!(
        r#"{{"cidr":"{}/31","affinity":"host:n2","allocations":[0,null],"unallocated":[1],"attributes":[{{"handle_id":"h8"}}]}}"#,
        eps[0].0
    );
    let cidr: Ipv4Prefix = format!("{}/31", eps[0].0).parse().unwrap();
    s.create(&keys::block(cidr), overlapping.as_bytes()).await.unwrap();
    let r = ipam::check(&s, &eps).await.unwrap();
    assert!(r.duplicates.iter().any(|(a, holders)| *a == eps[0].0 && holders.len() == 2), "{r}");
    // A record that does not parse is a finding, not an error.
    s.create(&keys::handle("garbled"), b"{not json").await.unwrap();
    let r = ipam::check(&s, &eps).await.unwrap();
    assert!(r.bad_blocks.iter().any(|(k, _)| k == &keys::handle("garbled")), "{r}");
}

#[tokio::test]
async fn claim_block_gives_the_node_an_affine_block() {
    let etcd = Etcd::start();
    let s = Store::connect(&etcd.endpoints()).await.unwrap();
    let pools = [pool("10.95.0.0/25", 26)];
    let b1 = ipam::claim_block(&s, "n1", &pools).await.unwrap();
    let b2 = ipam::claim_block(&s, "n2", &pools).await.unwrap();
    assert_ne!(b1, b2);
    assert_eq!(ipam::affine_blocks(&s, "n1").await.unwrap(), vec![b1]);
    let e = ipam::claim_block(&s, "n3", &pools).await.unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e:?}");
    // n1's first pod lands in the block it claimed.
    let a = ipam::assign(&s, "n1", "h", &pools, &attrs("n1")).await.unwrap();
    assert!(b1.contains(u32::from(a)));
}

#[tokio::test]
async fn a_removed_nodes_empty_blocks_are_freed_and_used_ones_lose_their_affinity() {
    let etcd = Etcd::start();
    let s = Store::connect(&etcd.endpoints()).await.unwrap();
    let pools = [pool("10.96.0.0/25", 26)];
    let a = ipam::assign(&s, "n1", "h1", &pools, &attrs("n1")).await.unwrap();
    let used = ipam::affine_blocks(&s, "n1").await.unwrap()[0];
    let empty = ipam::claim_block(&s, "n1", &pools).await.unwrap();
    let mut released = ipam::release_node_blocks(&s, "n1").await.unwrap();
    released.sort();
    let mut both = vec![used, empty];
    both.sort();
    assert_eq!(released, both);
    assert!(ipam::affine_blocks(&s, "n1").await.unwrap().is_empty());
    let blocks = ipam::blocks(&s).await.unwrap();
    assert_eq!(blocks.len(), 1, "the empty block is gone");
    assert_eq!((blocks[0].cidr, blocks[0].affinity.clone(), blocks[0].used()), (used, None, 1));
    assert!(ipam::check(&s, &[(a, "h1".to_string())]).await.unwrap().is_clean());
    // The freed block can be claimed again; the used one is borrowable, not claimable.
    assert_eq!(ipam::claim_block(&s, "n2", &pools).await.unwrap(), empty);
    assert!(ipam::release_node_blocks(&s, "n1").await.unwrap().is_empty(), "idempotent");
}

#[tokio::test]
async fn a_garbled_block_is_passed_over_by_assign_and_reported_by_check() {
    let etcd = Etcd::start();
    let s = Store::connect(&etcd.endpoints()).await.unwrap();
    let pools = [pool("10.97.0.0/25", 26)];
    let garbled: Ipv4Prefix = "10.97.0.0/26".parse().unwrap();
    s.create(&keys::block(garbled), b"{\"cidr\": 42").await.unwrap();
    s.create(&keys::affinity("n1", garbled), br#"{"state":"confirmed"}"#).await.unwrap();
    let a = ipam::assign(&s, "n1", "h1", &pools, &attrs("n1")).await.unwrap();
    assert!(!garbled.contains(u32::from(a)), "{a} from the other block");
    let r = ipam::check(&s, &[(a, "h1".to_string())]).await.unwrap();
    assert!(r.bad_blocks.iter().any(|(k, _)| k == &keys::block(garbled)), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_borrowers_racing_for_one_block_never_share_an_address() {
    let etcd = Etcd::start();
    // One block, owned by a node that allocates nothing; 40 other nodes (so no in-process
    // serialisation: each node has its own lock) borrow from it at once, through 3 connections.
    // Every allocation is a compare-and-swap on the same key.
    let pools = vec![pool("10.98.0.0/26", 26)];
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(Store::connect(&etcd.endpoints()).await.unwrap());
    }
    let owner = &stores[0];
    ipam::claim_block(owner, "owner", &pools).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (s, pools) = (stores[i % 3].clone(), pools.clone());
        tasks.push(tokio::spawn(async move {
            let node = format!("borrower{i}");
            let h = format!("h{i}");
            (h.clone(), ipam::assign(&s, &node, &h, &pools, &attrs(&node)).await.unwrap())
        }));
    }
    let mut eps = Vec::new();
    for t in tasks {
        let (h, a) = t.await.unwrap();
        eps.push((a, h));
    }
    let distinct: BTreeSet<Ipv4Addr> = eps.iter().map(|e| e.0).collect();
    assert_eq!(distinct.len(), 40);
    let blocks = ipam::blocks(owner).await.unwrap();
    assert_eq!((blocks.len(), blocks[0].affine_node(), blocks[0].used()), (1, Some("owner"), 40));
    assert!(ipam::check(owner, &eps).await.unwrap().is_clean());
}
