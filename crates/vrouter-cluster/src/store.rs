//! The etcd v3 key/value layer under the datastore and IPAM: reads, compare-and-swap writes,
//! multi-key transactions, and watches that resume from a revision.
//!
//! Rules this layer enforces (docs/datastore.md has the whole story):
//! - Nothing is written blind. A create compares the key's version with 0, an update or a
//!   delete its `mod_revision` with the one the caller read, in one etcd transaction; a lost
//!   race is [`StoreError::Conflict`] (or `Exists`/`NotFound`), never an overwrite.
//! - Nothing hangs. Connecting and every request are bounded ([`CONNECT_TIMEOUT`],
//!   [`REQUEST_TIMEOUT`]); an etcd that does not answer is [`StoreError::Unavailable`] naming
//!   the endpoints. Requests carry etcd's "require leader" flag, so a cluster without quorum
//!   fails fast instead of queueing, and its watches are cancelled rather than going silent.
//! - A watch starts at a given revision, so a client that lost its stream resumes at
//!   [`Watch::revision`] + 1 without missing or repeating an event; if etcd has compacted that
//!   revision away the watch says so ([`StoreError::Compacted`]) and the caller must resync
//!   from a full [`Store::list`].
//!
//! A request that times out may still have been applied (etcd does not say): callers that
//! retry must read back first (IPAM's assign is idempotent per handle for that reason).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOpResponse, WatchOptions,
    WatchStream,
};

/// Bound on establishing the connection (and on the first request that proves it works).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on every request; a quorum loss or a dead member surfaces within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// Keys per page when listing a prefix (pages are read at one revision: a consistent snapshot).
const LIST_PAGE: i64 = 500;
/// Large lists and watch batches (10,000 endpoints) exceed tonic's 4 MiB default.
const MAX_MESSAGE: usize = 256 << 20;

/// A key, its value and the revision of its last modification (the resource's version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// etcd did not answer (down, no quorum, timed out, stream broken).
    #[error("etcd unavailable at {endpoints}: {msg}")]
    Unavailable { endpoints: String, msg: String },
    /// A compare-and-swap lost: the key changed since `expected` (`current: None`: it is gone).
    #[error("{key}: modified concurrently (expected revision {expected}, now {})", match current { Some(r) => format!("revision {r}"), None => "deleted".to_string() })]
    Conflict { key: String, expected: i64, current: Option<i64> },
    #[error("{key}: already exists")]
    Exists { key: String },
    #[error("{key}: not found")]
    NotFound { key: String },
    /// The requested revision is older than etcd's compaction point: list again, then watch.
    #[error("revision compacted by etcd (oldest available revision {revision}): a full resync is needed")]
    Compacted { revision: i64 },
    /// A stored value this code cannot read (a non-UTF-8 key, a value of the wrong shape).
    #[error("{key}: corrupt value: {msg}")]
    Corrupt { key: String, msg: String },
    /// etcd answered but refused the request (too large, invalid); retrying will not help.
    #[error("etcd at {endpoints} refused the request on {key}: {msg}")]
    Rejected { endpoints: String, key: String, msg: String },
}

impl StoreError {
    /// True for the errors a caller should retry later (with backoff) rather than report.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// One write in a [`Store::txn`]: each carries its own compare, and all apply or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create `key` (it must not exist).
    Create { key: String, value: Vec<u8> },
    /// Replace `key`'s value if its `mod_revision` is still `expected`.
    Update { key: String, value: Vec<u8>, expected: i64 },
    /// Delete `key` if it exists (`expected: None`) or if its `mod_revision` is `expected`.
    Delete { key: String, expected: Option<i64> },
}

impl Op {
    pub fn key(&self) -> &str {
        match self {
            Op::Create { key, .. } | Op::Update { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    fn compare(&self) -> Compare {
        match self {
            Op::Create { key, .. } => Compare::version(key.as_str(), CompareOp::Equal, 0),
            Op::Update { key, expected, .. } | Op::Delete { key, expected: Some(expected) } => {
                Compare::mod_revision(key.as_str(), CompareOp::Equal, *expected)
            }
            Op::Delete { key, expected: None } => Compare::version(key.as_str(), CompareOp::Greater, 0),
        }
    }

    fn request(&self) -> etcd_client::TxnOp {
        match self {
            Op::Create { key, value } | Op::Update { key, value, .. } => {
                etcd_client::TxnOp::put(key.as_str(), value.as_slice(), None)
            }
            Op::Delete { key, .. } => etcd_client::TxnOp::delete(key.as_str(), None),
        }
    }

    /// The error this op's compare failing means, given the key's current `mod_revision`.
    /// `None` if the compare holds at `current` (another op of the transaction failed).
    fn failure(&self, current: Option<i64>) -> Option<StoreError> {
        let key = self.key().to_string();
        match (self, current) {
            (Op::Create { .. }, Some(_)) => Some(StoreError::Exists { key }),
            (Op::Create { .. }, None) => None,
            (Op::Delete { .. }, None) => Some(StoreError::NotFound { key }),
            (Op::Delete { expected: None, .. }, Some(_)) => None,
            (Op::Update { expected, .. } | Op::Delete { expected: Some(expected), .. }, cur) => {
                (cur != Some(*expected)).then_some(StoreError::Conflict { key, expected: *expected, current: cur })
            }
        }
    }
}

/// A connection to an etcd cluster (cheap to clone: clones share the connections).
///
/// One gRPC client per endpoint, and requests go to the last endpoint that answered, failing
/// over to the next when it cannot be reached (as etcd's Go client pins an endpoint). A single
/// balanced channel over all endpoints keeps sending a share of the requests to a dead
/// member (measured: 1 in 5 failed with one of three members killed), which would make a
/// member loss visible to every CNI ADD.
#[derive(Clone)]
pub struct Store {
    clients: Arc<Vec<Client>>,
    /// The endpoint of each client.
    urls: Arc<Vec<String>>,
    /// Index of the endpoint that answered last.
    preferred: Arc<AtomicUsize>,
    /// The endpoints as given, comma-separated, for error messages.
    endpoints: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("endpoints", &self.endpoints).finish()
    }
}

/// Pause between rounds over all endpoints (a leader election takes one or two of them).
const ROUND_PAUSE: Duration = Duration::from_millis(100);

/// etcd's own words for a failure (a gRPC status's message, without tonic's wrapping).
fn short(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().to_string(),
        other => other.to_string(),
    }
}

/// A member that refused the connection: nothing listens there (as opposed to a member
/// without a leader, or one that does not answer in time).
fn nothing_listens(failure: &str) -> bool {
    failure.contains("tcp connect error") || failure.contains("Connection refused")
}

/// A failure another member (or the same one a moment later) may not have.
fn transient(e: &etcd_client::Error) -> bool {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

impl Store {
    /// Connects to `endpoints` (`http://host:port`; a bare `host:port` works too) and proves
    /// the cluster serves with one linearizable read; bounded by [`CONNECT_TIMEOUT`] plus
    /// [`REQUEST_TIMEOUT`].
    pub async fn connect(endpoints: &[String]) -> Result<Store, StoreError> {
        let joined = endpoints.join(",");
        if endpoints.is_empty() {
            return Err(StoreError::Unavailable {
                endpoints: joined,
                msg: "no etcd endpoints given (--etcd-endpoints or ETCD_ENDPOINTS)".into(),
            });
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let c = match tokio::time::timeout(CONNECT_TIMEOUT, Client::connect([ep], Some(options.clone()))).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(StoreError::Unavailable { endpoints: joined, msg: format!("endpoint {ep}: {e}") })
                }
                Err(_) => {
                    return Err(StoreError::Unavailable {
                        endpoints: joined,
                        msg: format!("no connection within {CONNECT_TIMEOUT:?}"),
                    })
                }
            };
            clients.push(c);
        }
        let store = Store {
            clients: Arc::new(clients),
            urls: Arc::new(endpoints.to_vec()),
            preferred: Arc::new(AtomicUsize::new(0)),
            endpoints: joined,
        };
        // The channels connect lazily: one read shows whether anything answers.
        store.get(keys::CALICO).await?;
        Ok(store)
    }

    /// The endpoints this store was connected to, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// Runs one request (`f` sends it through the client it is given) under
    /// [`REQUEST_TIMEOUT`], starting at the endpoint that answered last and sending it again,
    /// to the next endpoint, after a failure another member may not have (unreachable, no
    /// leader, timed out); maps etcd's errors to [`StoreError`]. Sending a request again is
    /// safe for reads and for our writes, which all compare first: see [`Store::txn`].
    async fn call<T, Fut>(&self, key: &str, f: impl Fn(Client) -> Fut) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let n = self.clients.len();
        let start = self.preferred.load(Ordering::Relaxed);
        // The last failure of each endpoint, for the error when none answers.
        let mut failures: Vec<Option<String>> = vec![None; n];
        let gave_up = |failures: &[Option<String>]| {
            let each: Vec<String> =
                self.urls.iter().zip(failures).filter_map(|(u, f)| f.as_ref().map(|f| format!("{u}: {f}"))).collect();
            StoreError::Unavailable {
                endpoints: self.endpoints.clone(),
                msg: format!("no member answered within {REQUEST_TIMEOUT:?} (request on {key}): {}", each.join("; ")),
            }
        };
        // Rounds over the endpoints until one answers or the deadline passes: a member that is
        // down fails over at once, a cluster electing a leader ("no leader") is waited for.
        let mut first_round = true;
        loop {
            if !first_round {
                let pause = ROUND_PAUSE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                tokio::time::sleep(pause).await;
            }
            first_round = false;
            for i in 0..n {
                let idx = (start + i) % n;
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if remaining.is_zero() {
                    return Err(gave_up(&failures));
                }
                // With other members to try, one hung member must not take the whole budget.
                let budget = if n == 1 { remaining } else { remaining.min(REQUEST_TIMEOUT / 2) };
                match tokio::time::timeout(budget, f(self.clients[idx].clone())).await {
                    Ok(Ok(v)) => {
                        self.preferred.store(idx, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Ok(Err(e)) if transient(&e) => failures[idx] = Some(short(&e)),
                    Ok(Err(e)) => return Err(self.classify(key, e)),
                    Err(_) => failures[idx] = Some(format!("no answer within {budget:?}")),
                }
            }
            // Nothing listens on any member (every connection refused): no election to wait
            // for, so the caller hears it now rather than after the whole bound (a CNI ADD, an
            // agent backing off).
            if failures.iter().all(|f| f.as_deref().is_some_and(nothing_listens)) {
                return Err(gave_up(&failures));
            }
        }
    }

    fn classify(&self, key: &str, e: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        use tonic::Code;
        let unavailable = |msg: String| StoreError::Unavailable { endpoints: self.endpoints.clone(), msg };
        match e {
            E::GRpcStatus(s) => match s.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::Aborted
                | Code::Internal => unavailable(format!("{} (request on {key})", s.message())),
                Code::OutOfRange if s.message().contains("compacted") => StoreError::Compacted { revision: 0 },
                _ => StoreError::Rejected {
                    endpoints: self.endpoints.clone(),
                    key: key.to_string(),
                    msg: s.message().to_string(),
                },
            },
            E::TransportError(_) | E::IoError(_) | E::EndpointError(_) | E::Internal(_) | E::WatchError(_) => {
                unavailable(format!("{e} (request on {key})"))
            }
            other => {
                StoreError::Rejected { endpoints: self.endpoints.clone(), key: key.to_string(), msg: other.to_string() }
            }
        }
    }

    /// Reads one key (linearizable: sees every write acknowledged before the call).
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let mut resp = self
            .call(key, |c| {
                let key = key.to_string();
                async move { c.kv_client().get(key, None).await }
            })
            .await?;
        resp.take_kvs().into_iter().next().map(to_kv).transpose()
    }

    /// Reads several keys in one round trip, at one revision (a read-only transaction);
    /// the answer is in the order of `keys`.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Kv>>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        // etcd refuses transactions of more than 128 operations (--max-txn-ops).
        for chunk in keys.chunks(100) {
            let txn = Txn::new()
                .and_then(chunk.iter().map(|k| etcd_client::TxnOp::get(k.as_str(), None)).collect::<Vec<_>>());
            let resp = self
                .call(&chunk[0], |c| {
                    let txn = txn.clone();
                    async move { c.kv_client().max_decoding_message_size(MAX_MESSAGE).txn(txn).await }
                })
                .await?;
            for r in resp.op_responses() {
                let TxnOpResponse::Get(mut g) = r else { continue };
                out.push(g.take_kvs().into_iter().next().map(to_kv).transpose()?);
            }
        }
        Ok(out)
    }

    /// Every key under `prefix`, in key order, and the revision the snapshot was read at
    /// (watch from that revision + 1 to follow it without a gap). Large prefixes are read in
    /// pages pinned to one revision; if etcd compacts that revision mid-list the result is
    /// [`StoreError::Compacted`] and the caller lists again.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut out = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_sort(SortTarget::Key, SortOrder::Ascend);
            if revision != 0 {
                opts = opts.with_revision(revision);
            }
            let mut resp = self
                .call(prefix, |c| {
                    let (from, opts) = (from.clone(), opts.clone());
                    async move { c.kv_client().max_decoding_message_size(MAX_MESSAGE).get(from, Some(opts)).await }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else { break };
            from = last.key().to_vec();
            from.push(0);
            for k in kvs {
                out.push(to_kv(k)?);
            }
            if !more {
                break;
            }
        }
        Ok((out, revision))
    }

    /// Creates `key`; [`StoreError::Exists`] if it exists. Returns its `mod_revision`.
    pub async fn create(&self, key: &str, value: &[u8]) -> Result<i64, StoreError> {
        self.txn(&[Op::Create { key: key.into(), value: value.into() }]).await
    }

    /// Replaces `key`'s value if its `mod_revision` is still `expected`; returns the new one.
    pub async fn update(&self, key: &str, value: &[u8], expected: i64) -> Result<i64, StoreError> {
        self.txn(&[Op::Update { key: key.into(), value: value.into(), expected }]).await
    }

    /// Deletes `key` (if `expected` is given, only at that `mod_revision`).
    /// [`StoreError::NotFound`] if it is absent, [`StoreError::Conflict`] if it changed.
    pub async fn delete(&self, key: &str, expected: Option<i64>) -> Result<(), StoreError> {
        self.txn(&[Op::Delete { key: key.into(), expected }]).await.map(|_| ())
    }

    /// Applies all `ops` atomically, or none if any op's compare fails; then the error names
    /// the first op that failed (`Exists`, `NotFound` or `Conflict` with the current revision).
    /// Returns the revision of the write (each written key's new `mod_revision`).
    ///
    /// A transaction whose answer was lost (the member died after receiving it) is sent
    /// again, to another member. The compares make that safe: if the first one applied, the
    /// second fails its compare, and then, if every key holds exactly what this transaction
    /// wrote (deleted keys absent), it is reported as applied.
    pub async fn txn(&self, ops: &[Op]) -> Result<i64, StoreError> {
        let Some(first) = ops.first() else {
            return Err(StoreError::Rejected {
                endpoints: self.endpoints.clone(),
                key: String::new(),
                msg: "empty transaction".into(),
            });
        };
        let txn = Txn::new()
            .when(ops.iter().map(Op::compare).collect::<Vec<_>>())
            .and_then(ops.iter().map(Op::request).collect::<Vec<_>>())
            .or_else(ops.iter().map(|op| etcd_client::TxnOp::get(op.key(), None)).collect::<Vec<_>>());
        let sent = AtomicUsize::new(0);
        let resp = self
            .call(first.key(), |c| {
                sent.fetch_add(1, Ordering::Relaxed);
                let txn = txn.clone();
                async move { c.kv_client().max_decoding_message_size(MAX_MESSAGE).txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or(0));
        }
        let current: Vec<Option<etcd_client::KeyValue>> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            })
            .collect();
        if sent.load(Ordering::Relaxed) > 1 && current.len() == ops.len() {
            let ours = ops.iter().zip(&current).all(|(op, cur)| match (op, cur) {
                (Op::Create { value, .. } | Op::Update { value, .. }, Some(kv)) => kv.value() == value.as_slice(),
                (Op::Delete { .. }, None) => true,
                _ => false,
            });
            if ours {
                let rev = current.iter().flatten().map(|kv| kv.mod_revision()).max();
                return Ok(rev.unwrap_or_else(|| resp.header().map(|h| h.revision()).unwrap_or(0)));
            }
        }
        for (op, cur) in ops.iter().zip(&current) {
            if let Some(e) = op.failure(cur.as_ref().map(|k| k.mod_revision())) {
                return Err(e);
            }
        }
        // Every compare holds on the read-back: a write raced between compare and read.
        Err(StoreError::Conflict { key: first.key().to_string(), expected: 0, current: None })
    }

    /// Watches every key under `prefix` from `from_revision` on (0: from now). See [`Watch`].
    pub async fn watch(&self, prefix: &str, from_revision: i64) -> Result<Watch, StoreError> {
        let mut opts = WatchOptions::new().with_range(prefix_end(prefix.as_bytes())).with_progress_notify();
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision);
        }
        let stream = self
            .call(prefix, |c| {
                let (prefix, opts) = (prefix.to_string(), opts.clone());
                async move { c.watch_client().max_decoding_message_size(MAX_MESSAGE).watch(prefix, Some(opts)).await }
            })
            .await?;
        Ok(Watch {
            stream,
            store: self.clone(),
            prefix: prefix.to_string(),
            revision: from_revision.saturating_sub(1).max(0),
        })
    }

    /// Compacts etcd's history up to `revision` (physically, before returning). Operators and
    /// tests use it; a watch from an older revision then fails with [`StoreError::Compacted`].
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        self.call("(compaction)", |c| async move {
            c.kv_client().compact(revision, Some(etcd_client::CompactionOptions::new().with_physical())).await
        })
        .await
        .map(|_| ())
    }
}

/// A change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Kv),
    /// The key was deleted at revision `mod_revision`.
    Delete {
        key: String,
        mod_revision: i64,
    },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
    pub fn mod_revision(&self) -> i64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// A stream of changes under a prefix. `next` returns each revision's events in order;
/// after an error the watch is finished: re-watch from [`Watch::revision`] + 1
/// (`Unavailable`), or list and watch afresh (`Compacted`).
pub struct Watch {
    stream: WatchStream,
    store: Store,
    prefix: String,
    revision: i64,
}

impl Watch {
    /// Every event up to this revision has been returned by `next` (resume at it + 1).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next batch of events (never empty). Waits as long as nothing changes; a broken
    /// stream is detected by HTTP/2 keep-alive within seconds. etcd's progress notifications
    /// advance [`Watch::revision`] without returning.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, StoreError> {
        loop {
            let msg = match self.stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    return Err(StoreError::Unavailable {
                        endpoints: self.store.endpoints.clone(),
                        msg: format!("watch on {} closed by etcd", self.prefix),
                    })
                }
                Err(e) => return Err(self.store.classify(&self.prefix, e)),
            };
            if msg.compact_revision() != 0 {
                return Err(StoreError::Compacted { revision: msg.compact_revision() });
            }
            if msg.canceled() {
                return Err(StoreError::Unavailable {
                    endpoints: self.store.endpoints.clone(),
                    msg: format!("watch on {} cancelled by etcd: {}", self.prefix, msg.cancel_reason()),
                });
            }
            let mut events = Vec::with_capacity(msg.events().len());
            for ev in msg.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = kv
                    .key_str()
                    .map_err(|e| StoreError::Corrupt {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        msg: format!("key is not UTF-8: {e}"),
                    })?
                    .to_string();
                events.push(match ev.event_type() {
                    etcd_client::EventType::Put => {
                        WatchEvent::Put(Kv { key, value: kv.value().to_vec(), mod_revision: kv.mod_revision() })
                    }
                    etcd_client::EventType::Delete => WatchEvent::Delete { key, mod_revision: kv.mod_revision() },
                });
            }
            if let Some(last) = events.last() {
                self.revision = self.revision.max(last.mod_revision());
                return Ok(events);
            }
            // A progress notification: every event up to the header's revision was sent.
            // (The `created` reply carries the current revision, not the watch's progress.)
            if !msg.created() {
                if let Some(h) = msg.header() {
                    self.revision = self.revision.max(h.revision());
                }
            }
        }
    }
}

fn to_kv(kv: etcd_client::KeyValue) -> Result<Kv, StoreError> {
    let mod_revision = kv.mod_revision();
    let (key, value) = kv.into_key_value();
    let key = String::from_utf8(key).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        msg: "key is not UTF-8".into(),
    })?;
    Ok(Kv { key, value, mod_revision })
}

/// The end of the key range holding every key that starts with `prefix` (etcd's convention:
/// the prefix with its last byte below 0xff incremented; `\0` for "to the end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("non-empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// The etcd key layout, as Calico's etcdv3 backend writes it (docs/datastore.md).
pub mod keys {
    use std::net::Ipv4Addr;
    use vrouter_types::Ipv4Prefix;

    /// Everything Calico-shaped lives under this.
    pub const CALICO: &str = "/calico/";
    /// `projectcalico.org/v3` resources: `<RESOURCES><plural>/[<namespace>/]<name>`.
    pub const RESOURCES: &str = "/calico/resources/v3/projectcalico.org/";
    /// All IPAM state (blocks, handles, affinities).
    pub const IPAM: &str = "/calico/ipam/v2/";
    /// IPv4 allocation blocks: `<BLOCKS><a.b.c.d>-<len>`.
    pub const BLOCKS: &str = "/calico/ipam/v2/assignment/ipv4/block/";
    /// Handles (one per pod interface: the container ID): `<HANDLES><handle>`.
    pub const HANDLES: &str = "/calico/ipam/v2/handle/";
    /// Block affinities: `<HOSTS><node>/ipv4/block/<a.b.c.d>-<len>`.
    pub const HOSTS: &str = "/calico/ipam/v2/host/";

    /// A resource's key; `namespace` only for namespaced kinds.
    pub fn resource(plural: &str, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) => format!("{RESOURCES}{plural}/{ns}/{name}"),
            None => format!("{RESOURCES}{plural}/{name}"),
        }
    }

    /// The prefix listing a kind (in one namespace, or all of them with `None`).
    pub fn resources(plural: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) => format!("{RESOURCES}{plural}/{ns}/"),
            None => format!("{RESOURCES}{plural}/"),
        }
    }

    /// `a.b.c.d-len`: a CIDR as Calico spells it in keys.
    pub fn cidr_name(prefix: Ipv4Prefix) -> String {
        format!("{}-{}", Ipv4Addr::from(prefix.addr()), prefix.len())
    }

    /// Parses the last path element of a block or affinity key back into its CIDR.
    pub fn parse_cidr_name(key: &str) -> Option<Ipv4Prefix> {
        let name = key.rsplit('/').next()?;
        let (a, l) = name.rsplit_once('-')?;
        Ipv4Prefix::new(u32::from(a.parse::<Ipv4Addr>().ok()?), l.parse().ok()?)
    }

    pub fn block(prefix: Ipv4Prefix) -> String {
        format!("{BLOCKS}{}", cidr_name(prefix))
    }

    pub fn handle(id: &str) -> String {
        format!("{HANDLES}{id}")
    }

    pub fn affinity(node: &str, prefix: Ipv4Prefix) -> String {
        format!("{}{}", affinities(node), cidr_name(prefix))
    }

    /// The prefix of one node's block affinities.
    pub fn affinities(node: &str) -> String {
        format!("{HOSTS}{node}/ipv4/block/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn keys_follow_calicos_layout() {
        let p: vrouter_types::Ipv4Prefix = "10.65.0.64/26".parse().unwrap();
        assert_eq!(keys::block(p), "/calico/ipam/v2/assignment/ipv4/block/10.65.0.64-26");
        assert_eq!(keys::affinity("n1", p), "/calico/ipam/v2/host/n1/ipv4/block/10.65.0.64-26");
        assert_eq!(keys::parse_cidr_name(&keys::affinity("n1", p)), Some(p));
        assert_eq!(keys::parse_cidr_name("/x/10.65.0.65-26"), None, "host bits set");
        assert_eq!(keys::handle("k8s-pod-network.abc"), "/calico/ipam/v2/handle/k8s-pod-network.abc");
        assert_eq!(
            keys::resource("workloadendpoints", Some("ns1"), "w"),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/w"
        );
        assert_eq!(keys::resource("ippools", None, "p"), "/calico/resources/v3/projectcalico.org/ippools/p");
    }

    #[test]
    fn op_failure_names_the_cause() {
        let c = Op::Create { key: "k".into(), value: vec![] };
        assert_eq!(c.failure(Some(3)), Some(StoreError::Exists { key: "k".into() }));
        assert_eq!(c.failure(None), None);
        let u = Op::Update { key: "k".into(), value: vec![], expected: 5 };
        assert_eq!(u.failure(Some(5)), None);
        assert_eq!(u.failure(Some(7)), Some(StoreError::Conflict { key: "k".into(), expected: 5, current: Some(7) }));
        assert_eq!(u.failure(None), Some(StoreError::Conflict { key: "k".into(), expected: 5, current: None }));
        let d = Op::Delete { key: "k".into(), expected: None };
        assert_eq!(d.failure(None), Some(StoreError::NotFound { key: "k".into() }));
        assert_eq!(d.failure(Some(1)), None);
    }
}
