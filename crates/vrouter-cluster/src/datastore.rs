//! Resources over the store: create, replace, apply, get, list, delete, each a
//! compare-and-swap on the key's revision. A resource read carries its `resourceVersion` (the
//! key's mod_revision); a write that carries one is refused if the resource changed since
//! (calicoctl's optimistic concurrency), and a write without one is still a CAS on the
//! revision just read, so two writers never silently overwrite each other.

use crate::resource::{resource_key, Kind, Resource};
use crate::store::{keys, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{kind} '{name}' already exists (use replace or apply)")]
    Exists { kind: Kind, name: String },
    #[error("{kind} '{name}' does not exist")]
    NotFound { kind: Kind, name: String },
    #[error(
        "{kind} '{name}': resourceVersion {given} is stale, the resource is now at {current} (get it again, re-apply your change)"
    )]
    Stale { kind: Kind, name: String, given: i64, current: String },
    #[error("{kind} '{name}' is stored in a form vrouter cannot read: {msg}")]
    Unreadable { kind: Kind, name: String, msg: String },
    #[error("{kind} '{name}': {msg}")]
    Invalid { kind: Kind, name: String, msg: String },
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Created(i64),
    Updated(i64),
    /// Apply of what is already stored: nothing written.
    Unchanged(i64),
}

impl Written {
    pub fn revision(self) -> i64 {
        match self {
            Written::Created(r) | Written::Updated(r) | Written::Unchanged(r) => r,
        }
    }
    pub fn verb(self) -> &'static str {
        match self {
            Written::Created(_) => "created",
            Written::Updated(_) => "updated",
            Written::Unchanged(_) => "unchanged",
        }
    }
}

/// Typed access to the resources in a [`Store`].
#[derive(Clone)]
pub struct Datastore {
    store: Store,
}

impl Datastore {
    pub fn new(store: Store) -> Datastore {
        Datastore { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks against the other resources that a single document cannot see (pools do not
    /// overlap, a pool's CIDR is not changed under allocated blocks).
    async fn cross_check(&self, r: &Resource) -> Result<(), DatastoreError> {
        if let Resource::IpPool(p) = r {
            for other in self.list(Kind::IpPool, None).await? {
                let Resource::IpPool(o) = other else { continue };
                if o.metadata.name == p.metadata.name {
                    if o.spec.cidr != p.spec.cidr || o.spec.block_size != p.spec.block_size {
                        let blocks = crate::ipam::blocks(&self.store).await.map_err(|e| DatastoreError::Invalid {
                            kind: Kind::IpPool,
                            name: p.metadata.name.clone(),
                            msg: format!("cannot check the pool's blocks: {e}"),
                        })?;
                        if let Some(b) = blocks.iter().find(|b| o.spec.cidr.covers(&b.cidr)) {
                            return Err(DatastoreError::Invalid {
                                kind: Kind::IpPool,
                                name: p.metadata.name.clone(),
                                msg: format!(
                                    "spec.cidr/blockSize cannot change while blocks are allocated from it ({} and maybe more); create a new pool, disable this one, and release its addresses",
                                    b.cidr
                                ),
                            });
                        }
                    }
                    continue;
                }
                let (a, b) = (p.spec.cidr, o.spec.cidr);
                if a.covers(&b) || b.covers(&a) {
                    return Err(DatastoreError::Invalid {
                        kind: Kind::IpPool,
                        name: p.metadata.name.clone(),
                        msg: format!(
                            "spec.cidr {a} overlaps IPPool '{}' ({b}); pools must not overlap",
                            o.metadata.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates `r`; refused if it exists.
    pub async fn create(&self, r: &Resource) -> Result<Written, DatastoreError> {
        self.cross_check(r).await?;
        match self.store.create(&r.key(), &r.to_stored_json()).await {
            Ok(rev) => Ok(Written::Created(rev)),
            Err(StoreError::Exists { .. }) => Err(DatastoreError::Exists { kind: r.kind(), name: r.display_name() }),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces `r`; refused if it does not exist, or if `r` carries a resourceVersion that is
    /// no longer the stored one.
    pub async fn replace(&self, r: &Resource) -> Result<Written, DatastoreError> {
        let key = r.key();
        let current = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| DatastoreError::NotFound { kind: r.kind(), name: r.display_name() })?;
        self.write_over(r, current.mod_revision).await
    }

    /// Creates or replaces `r` (calicoctl's apply): unchanged content is not rewritten.
    pub async fn apply(&self, r: &Resource) -> Result<Written, DatastoreError> {
        let key = r.key();
        match self.store.get(&key).await? {
            None => {
                if let Some(given) = r.resource_version() {
                    return Err(DatastoreError::Stale {
                        kind: r.kind(),
                        name: r.display_name(),
                        given,
                        current: "deleted".into(),
                    });
                }
                self.create(r).await
            }
            Some(current) => {
                if current.value == r.to_stored_json() && r.resource_version().is_none_or(|v| v == current.mod_revision)
                {
                    return Ok(Written::Unchanged(current.mod_revision));
                }
                self.write_over(r, current.mod_revision).await
            }
        }
    }

    async fn write_over(&self, r: &Resource, current: i64) -> Result<Written, DatastoreError> {
        let stale = |now: String| DatastoreError::Stale {
            kind: r.kind(),
            name: r.display_name(),
            given: r.resource_version().unwrap_or(current),
            current: now,
        };
        if let Some(given) = r.resource_version() {
            if given != current {
                return Err(stale(current.to_string()));
            }
        }
        self.cross_check(r).await?;
        match self.store.update(&r.key(), &r.to_stored_json(), current).await {
            Ok(rev) => Ok(Written::Updated(rev)),
            Err(StoreError::Conflict { current: now, .. }) => {
                Err(stale(now.map_or_else(|| "deleted".to_string(), |n| n.to_string())))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One resource, with its resourceVersion.
    pub async fn get(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Resource>, DatastoreError> {
        let ns = namespace_for(kind, namespace);
        let Some(kv) = self.store.get(&resource_key(kind, ns, name)).await? else {
            return Ok(None);
        };
        Resource::from_stored(kind, &kv.value, kv.mod_revision).map(Some).map_err(|e| DatastoreError::Unreadable {
            kind,
            name: name.to_string(),
            msg: e.message,
        })
    }

    /// Every resource of `kind` (in `namespace` only, when given and the kind is namespaced;
    /// all namespaces without), sorted by key. Unreadable values are errors, not skipped.
    pub async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Resource>, DatastoreError> {
        let prefix = keys::resources(kind.plural(), namespace.filter(|_| kind.namespaced()));
        let (kvs, _) = self.store.list(&prefix).await?;
        kvs.iter()
            .map(|kv| {
                Resource::from_stored(kind, &kv.value, kv.mod_revision).map_err(|e| DatastoreError::Unreadable {
                    kind,
                    name: kv.key.rsplit('/').next().unwrap_or_default().to_string(),
                    msg: e.message,
                })
            })
            .collect()
    }

    /// Deletes a resource; with `resource_version`, only if it is still that version.
    pub async fn delete(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        resource_version: Option<i64>,
    ) -> Result<(), DatastoreError> {
        let key = resource_key(kind, namespace_for(kind, namespace), name);
        let shown = display_name(kind, namespace, name);
        match self.store.delete(&key, resource_version).await {
            Ok(()) => Ok(()),
            Err(StoreError::NotFound { .. }) => Err(DatastoreError::NotFound { kind, name: shown }),
            Err(StoreError::Conflict { current, .. }) => Err(DatastoreError::Stale {
                kind,
                name: shown,
                given: resource_version.unwrap_or_default(),
                current: current.map_or_else(|| "deleted".to_string(), |n| n.to_string()),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// How a resource is named in messages: `namespace/name` for a namespaced kind (in "default"
/// without one), `name` otherwise (as [`Resource::display_name`] for a resource in hand).
pub fn display_name(kind: Kind, namespace: Option<&str>, name: &str) -> String {
    match namespace_for(kind, namespace) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// A namespaced kind without a namespace is in "default" (as calicoctl has it); a
/// cluster-scoped kind has none.
fn namespace_for(kind: Kind, namespace: Option<&str>) -> Option<&str> {
    match kind.namespaced() {
        true => Some(namespace.unwrap_or("default")),
        false => None,
    }
}
