//! store.rs against a real etcd (started per test by `testing::Etcd`): compare-and-swap,
//! transactions, listing, watches that resume and report compaction, and bounded failure when
//! etcd is down.

use std::time::{Duration, Instant};

use vrouter_cluster::store::{Op, Store, StoreError, WatchEvent, REQUEST_TIMEOUT};
use vrouter_cluster::testing::{Etcd, EtcdCluster};

async fn store(etcd: &Etcd) -> Store {
    Store::connect(&etcd.endpoints()).await.expect("connect to the test etcd")
}

#[tokio::test]
async fn update_is_compare_and_swap_on_mod_revision() {
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let r1 = s.create("/t/k", b"one").await.unwrap();
    let r2 = s.update("/t/k", b"two", r1).await.unwrap();
    assert!(r2 > r1);
    // A writer that read at r1 loses, and is told the current revision.
    let e = s.update("/t/k", b"stale", r1).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { key: "/t/k".into(), expected: r1, current: Some(r2) });
    let kv = s.get("/t/k").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"two"[..], r2));
    // Updating a key that is gone is a conflict with no current revision.
    s.delete("/t/k", Some(r2)).await.unwrap();
    let e = s.update("/t/k", b"x", r2).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { key: "/t/k".into(), expected: r2, current: None });
}

#[tokio::test]
async fn create_of_an_existing_key_is_refused_and_changes_nothing() {
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let r = s.create("/t/a", b"first").await.unwrap();
    assert_eq!(s.create("/t/a", b"second").await.unwrap_err(), StoreError::Exists { key: "/t/a".into() });
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.mod_revision), (b"first".to_vec(), r));
    assert_eq!(s.get("/t/none").await.unwrap(), None);
}

#[tokio::test]
async fn delete_checks_the_expected_revision_and_reports_absence() {
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let r1 = s.create("/t/d", b"1").await.unwrap();
    let r2 = s.update("/t/d", b"2", r1).await.unwrap();
    let e = s.delete("/t/d", Some(r1)).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { key: "/t/d".into(), expected: r1, current: Some(r2) });
    assert!(s.get("/t/d").await.unwrap().is_some(), "a stale delete deletes nothing");
    s.delete("/t/d", Some(r2)).await.unwrap();
    assert_eq!(s.delete("/t/d", None).await.unwrap_err(), StoreError::NotFound { key: "/t/d".into() });
    assert_eq!(s.delete("/t/d", Some(r2)).await.unwrap_err(), StoreError::NotFound { key: "/t/d".into() });
    s.create("/t/d", b"again").await.unwrap();
    s.delete("/t/d", None).await.unwrap();
}

#[tokio::test]
async fn txn_applies_all_or_nothing_and_names_the_failed_op() {
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let rb = s.create("/t/b", b"b0").await.unwrap();
    let rb2 = s.update("/t/b", b"b1", rb).await.unwrap();
    let ops = [
        Op::Create { key: "/t/a".into(), value: b"a".to_vec() },
        Op::Update { key: "/t/b".into(), value: b"b2".to_vec(), expected: rb },
    ];
    let e = s.txn(&ops).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { key: "/t/b".into(), expected: rb, current: Some(rb2) });
    assert_eq!(s.get("/t/a").await.unwrap(), None, "the create did not apply either");
    let ops = [
        Op::Create { key: "/t/a".into(), value: b"a".to_vec() },
        Op::Update { key: "/t/b".into(), value: b"b2".to_vec(), expected: rb2 },
    ];
    let r = s.txn(&ops).await.unwrap();
    assert_eq!(s.get("/t/a").await.unwrap().unwrap().mod_revision, r);
    assert_eq!(s.get("/t/b").await.unwrap().unwrap().mod_revision, r);
}

#[tokio::test]
async fn list_returns_the_prefix_in_key_order_at_one_revision_across_pages() {
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    s.create("/t/outside", b"x").await.unwrap();
    s.create("/t/p", b"not under /t/p/").await.unwrap();
    // More than one page (500 keys), written concurrently.
    let n = 1203;
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { s.create(&format!("/t/p/{i:05}"), b"v").await.unwrap() }));
    }
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    let (kvs, rev) = s.list("/t/p/").await.unwrap();
    assert_eq!(kvs.len(), n);
    assert!(kvs.windows(2).all(|w| w[0].key < w[1].key), "key order");
    assert!(kvs.iter().all(|kv| kv.key.starts_with("/t/p/")));
    assert_eq!(rev, last, "the snapshot revision is the last write's");
    let (empty, rev2) = s.list("/t/none/").await.unwrap();
    assert!(empty.is_empty());
    assert_eq!(rev2, last);
}

#[tokio::test]
async fn watch_from_a_revision_sees_exactly_the_later_events() {
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let _r1 = s.create("/w/a", b"1").await.unwrap();
    let r2 = s.create("/w/b", b"2").await.unwrap();
    let r3 = s.update("/w/b", b"3", r2).await.unwrap();
    s.create("/x/ignored", b"other prefix").await.unwrap();
    let mut w = s.watch("/w/", r2).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.extend(tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("events").unwrap());
    }
    assert_eq!(
        seen,
        vec![
            WatchEvent::Put(vrouter_cluster::store::Kv { key: "/w/b".into(), value: b"2".to_vec(), mod_revision: r2 }),
            WatchEvent::Put(vrouter_cluster::store::Kv { key: "/w/b".into(), value: b"3".to_vec(), mod_revision: r3 }),
        ]
    );
    assert_eq!(w.revision(), r3);
    // Live events follow, deletes included.
    s.delete("/w/a", None).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("delete event").unwrap();
    assert!(matches!(&ev[..], [WatchEvent::Delete { key, mod_revision }] if key == "/w/a" && *mod_revision == r3 + 2));
    // Resuming from revision() + 1 repeats nothing: the next event is the next write.
    let resume = w.revision() + 1;
    drop(w);
    let r = s.create("/w/c", b"c").await.unwrap();
    let mut w2 = s.watch("/w/", resume).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w2.next()).await.expect("resumed").unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].key(), ev[0].mod_revision()), ("/w/c", r));
}

#[tokio::test]
async fn watch_from_a_compacted_revision_reports_compacted() {
    let etcd = Etcd::start();
    let s = store(&etcd).await;
    let first = s.create("/c/k", b"0").await.unwrap();
    let mut r = first;
    for i in 1..5 {
        r = s.update("/c/k", format!("{i}").as_bytes(), r).await.unwrap();
    }
    s.compact(r).await.unwrap();
    let mut w = s.watch("/c/", first).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("an answer").unwrap_err();
    assert_eq!(e, StoreError::Compacted { revision: r });
    // From the compaction point on, watching works again.
    let mut w = s.watch("/c/", r).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("events").unwrap();
    assert_eq!(ev[0].mod_revision(), r);
}

/// Asserts `e` is Unavailable naming `endpoint`, and that it came within the request bound.
fn assert_unavailable(e: StoreError, endpoint: &str, took: Duration) {
    match &e {
        StoreError::Unavailable { endpoints, .. } => assert!(endpoints.contains(endpoint), "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(e.to_string().contains(endpoint), "message names the endpoint: {e}");
    assert!(took <= REQUEST_TIMEOUT + Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn a_dead_etcd_is_unavailable_within_the_timeout_never_a_hang() {
    let mut etcd = Etcd::start();
    let ep = etcd.endpoints()[0].clone();
    let s = store(&etcd).await;
    s.create("/u/k", b"v").await.unwrap();
    let mut w = s.watch("/u/", 0).await.unwrap();
    etcd.kill();
    let t = Instant::now();
    let e = s.get("/u/k").await.unwrap_err();
    assert_unavailable(e, &ep, t.elapsed());
    let t = Instant::now();
    let e = s.update("/u/k", b"w", 1).await.unwrap_err();
    assert_unavailable(e, &ep, t.elapsed());
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(15), w.next()).await.expect("the watch ends").unwrap_err();
    assert!(e.is_unavailable(), "{e:?} after {:?}", t.elapsed());
    let t = Instant::now();
    let e = Store::connect(&etcd.endpoints()).await.unwrap_err();
    assert_unavailable(e, &ep, t.elapsed());
    // Back up: the same Store works again.
    etcd.restart();
    let kv = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(kv) = s.get("/u/k").await {
                return kv;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("store reconnects");
    assert_eq!(kv.unwrap().value, b"v");
}

#[tokio::test]
async fn a_cluster_serves_every_request_with_one_member_down_and_is_unavailable_with_all_down() {
    let mut c = EtcdCluster::start(3);
    let s = Store::connect(&c.endpoints()).await.unwrap();
    let mut r = s.create("/f/k", b"0").await.unwrap();
    // Kill each member in turn (one of them the leader): every request right after the kill
    // succeeds, writes included: the store fails over, and waits out the election.
    for victim in 0..3 {
        c.kill(victim);
        for i in 0..20 {
            r = s.update("/f/k", format!("{victim}.{i}").as_bytes(), r).await.unwrap_or_else(|e| {
                panic!("member {victim} down: write {i} failed: {e}");
            });
            let (kvs, _) = s.list("/f/").await.unwrap_or_else(|e| panic!("member {victim} down: list {i}: {e}"));
            assert_eq!(kvs[0].mod_revision, r);
        }
        c.restart(victim);
        c.wait_healthy();
    }
    for i in 0..3 {
        c.kill(i);
    }
    let t = Instant::now();
    let e = s.get("/f/k").await.unwrap_err();
    assert_unavailable(e, &c.endpoint(2), t.elapsed());
    let t = Instant::now();
    let e = s.update("/f/k", b"x", r).await.unwrap_err();
    assert_unavailable(e, &c.endpoint(2), t.elapsed());
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_healthy();
    let kv = retry(|| s.get("/f/k")).await.unwrap();
    assert_eq!((kv.value, kv.mod_revision), (b"2.19".to_vec(), r));
}

/// Retries an idempotent request while it is Unavailable (a dead member's connection), 10 s.
async fn retry<T, F: std::future::Future<Output = Result<T, StoreError>>>(f: impl Fn() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn a_watch_broken_by_a_member_kill_resumes_on_another_member_without_gap_or_repeat() {
    let mut c = EtcdCluster::start(3);
    let s = Store::connect(&c.endpoints()).await.unwrap();
    let r0 = s.create("/rw/a", b"0").await.unwrap();
    let mut w = s.watch("/rw/", r0).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("first event").unwrap();
    assert_eq!(ev[0].mod_revision(), r0);
    // Kill the member serving the watch (the store's first endpoint answered the connect).
    c.kill(0);
    let e = tokio::time::timeout(Duration::from_secs(15), w.next()).await.expect("the watch ends").unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    // Writes go on meanwhile (through the other members).
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(s.create(&format!("/rw/k{i}"), b"v").await.unwrap());
    }
    // Resume from the last revision delivered + 1: exactly the five writes, in order.
    let mut w = s.watch("/rw/", w.revision() + 1).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("resumed events").unwrap();
        seen.extend(ev.iter().map(|e| e.mod_revision()));
    }
    assert_eq!(seen, revs);
}

#[tokio::test]
async fn losing_quorum_ends_the_watch_and_requests_as_unavailable() {
    let mut c = EtcdCluster::start(3);
    let s = Store::connect(&c.endpoints()).await.unwrap();
    let r = s.create("/q/k", b"0").await.unwrap();
    let mut w = s.watch("/q/", r + 1).await.unwrap();
    // Member 0 (serving the watch) lives on without a leader: the watch must not go silent.
    c.kill(1);
    c.kill(2);
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(15), w.next()).await.expect("the watch ends").unwrap_err();
    assert!(e.is_unavailable() && e.to_string().contains("no leader"), "{e} after {:?}", t.elapsed());
    let t = Instant::now();
    let e = s.get("/q/k").await.unwrap_err();
    // The error says what each member answered: the live one has no leader, the others are down.
    assert!(e.to_string().contains(&format!("{}: ", c.endpoint(0))) && e.to_string().contains("no leader"), "{e}");
    assert_unavailable(e, &c.endpoint(1), t.elapsed());
}
