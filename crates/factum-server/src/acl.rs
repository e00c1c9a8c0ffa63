//! Stream ACLs, KurrentDB's model (ADR 31).
//!
//! Each permission — `$r` read, `$w` write, `$d` delete, `$mr` metadata
//! read, `$mw` metadata write — is decided from the first of:
//! 1. the stream's `$acl` in its metadata (`$$<stream>`): a role or a list
//!    of roles per permission (an empty list: admins only);
//! 2. the defaults in the last event of `$settings`: `$userStreamAcl` for
//!    user streams, `$systemStreamAcl` for system streams (names starting
//!    with `$`: `$all`, `$ce-…`, `$et-…`, `$users`, …);
//! 3. built-in defaults: user streams are open to every authenticated
//!    user (`$all`), system streams to `$admins`.
//!
//! `$admins` pass every check; `$all` in an ACL means every authenticated
//! user; every user has the role of its own login. The metadata stream
//! `$$x` is governed by `x`'s `$mr` / `$mw`.
//!
//! Effective ACLs are cached per stream, and `$settings`' defaults once;
//! [`Acls::forget`] / [`Acls::forget_settings`] drop them when this node
//! writes `$$x` or `$settings` (the client store calls them after every
//! such write), and entries older than [`CACHE_TTL`] are read again (other
//! nodes sharing a PostgreSQL store).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use factum_core::{Error, EventStore, ReadStream, Result, StreamName};
use serde_json::Value;

use crate::auth::{Identity, Principal};

/// How long an effective ACL is trusted without reading it again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// Streams whose ACLs are cached at most; beyond it the cache starts afresh.
const CACHE_ENTRIES: usize = 100_000;

/// The stream holding the default ACLs (KurrentDB's name).
pub const SETTINGS_STREAM: &str = "$settings";

/// The role that means every authenticated user.
pub const ALL_USERS: &str = "$all";

/// What an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `$r`: read and subscribe.
    Read,
    /// `$w`: append.
    Write,
    /// `$d`: delete and tombstone.
    Delete,
    /// `$mr`: read the metadata.
    MetadataRead,
    /// `$mw`: write the metadata.
    MetadataWrite,
}

impl Permission {
    const ALL: [Permission; 5] = [
        Permission::Read,
        Permission::Write,
        Permission::Delete,
        Permission::MetadataRead,
        Permission::MetadataWrite,
    ];

    /// The key in an `$acl` object.
    pub fn key(self) -> &'static str {
        match self {
            Permission::Read => "$r",
            Permission::Write => "$w",
            Permission::Delete => "$d",
            Permission::MetadataRead => "$mr",
            Permission::MetadataWrite => "$mw",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Roles per permission; `None` where the ACL does not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl([Option<Vec<String>>; 5]);

impl Acl {
    /// An `$acl` object (`{"$r": "role" | ["roles"], …}`); what cannot be
    /// read as roles is ignored (as KurrentDB).
    pub fn parse(value: &Value) -> Acl {
        let mut acl = Acl::default();
        let Some(obj) = value.as_object() else {
            return acl;
        };
        for p in Permission::ALL {
            acl.0[p.index()] = match obj.get(p.key()) {
                Some(Value::String(role)) => Some(vec![role.clone()]),
                Some(Value::Array(roles)) => Some(
                    roles
                        .iter()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            };
        }
        acl
    }

    fn everyone(role: &str) -> Acl {
        Acl(std::array::from_fn(|_| Some(vec![role.to_owned()])))
    }

    /// This ACL where it says, else `fallback`.
    fn or(&self, fallback: &Acl) -> Acl {
        Acl(std::array::from_fn(|i| {
            self.0[i].clone().or_else(|| fallback.0[i].clone())
        }))
    }

    /// True when `who` has `permission` by this (complete) ACL.
    pub fn allows(&self, who: &Identity, permission: Permission) -> bool {
        if who.is_admin() {
            return true;
        }
        self.0[permission.index()].as_ref().is_some_and(|roles| {
            roles
                .iter()
                .any(|role| role == ALL_USERS || who.has_role(role))
        })
    }
}

/// The defaults of `$settings`, over the built-in ones.
#[derive(Clone, Debug)]
struct Defaults {
    user: Acl,
    system: Acl,
}

impl Defaults {
    fn built_in() -> Defaults {
        Defaults {
            user: Acl::everyone(ALL_USERS),
            system: Acl::everyone(crate::auth::ADMINS),
        }
    }

    fn from_settings(settings: &Value) -> Defaults {
        let built_in = Defaults::built_in();
        let get = |key: &str, fallback: &Acl| {
            settings
                .get(key)
                .map(|v| Acl::parse(v).or(fallback))
                .unwrap_or_else(|| fallback.clone())
        };
        Defaults {
            user: get("$userStreamAcl", &built_in.user),
            system: get("$systemStreamAcl", &built_in.system),
        }
    }
}

/// A system stream: its name starts with `$` (`$all`, `$ce-…`, `$users`).
pub fn is_system(stream: &str) -> bool {
    stream.starts_with('$')
}

/// The ACLs of a store's streams, cached.
pub struct Acls<S> {
    store: Arc<S>,
    streams: Mutex<HashMap<String, (Arc<Acl>, Instant)>>,
    defaults: Mutex<Option<(Arc<Defaults>, Instant)>>,
}

impl<S: EventStore> Acls<S> {
    /// The ACLs of `store`'s streams (read through the store itself).
    pub fn new(store: Arc<S>) -> Self {
        Acls {
            store,
            streams: Mutex::new(HashMap::new()),
            defaults: Mutex::new(None),
        }
    }

    /// True when `who` may do `permission` on `stream` (for `$$x`, the
    /// metadata permissions of `x` are asked instead by the caller).
    pub async fn allowed(
        &self,
        who: &Principal,
        stream: &StreamName,
        permission: Permission,
    ) -> Result<bool> {
        let identity = match who {
            Principal::User(identity) => identity,
            // Never reaches here in secure mode: the gate refuses it first.
            Principal::Anonymous => return Ok(false),
        };
        if identity.is_admin() {
            return Ok(true);
        }
        Ok(self.effective(stream).await?.allows(identity, permission))
    }

    /// The complete ACL of `stream`.
    async fn effective(&self, stream: &StreamName) -> Result<Arc<Acl>> {
        let name = stream.as_str();
        if let Some((acl, at)) = self.lock_streams().get(name) {
            if at.elapsed() < CACHE_TTL {
                return Ok(acl.clone());
            }
        }
        let defaults = self.defaults().await?;
        let fallback = if is_system(name) {
            &defaults.system
        } else {
            &defaults.user
        };
        let own = match self.store.stream_metadata(stream.clone()).await {
            Ok(m) => m.metadata.acl.as_ref().map(Acl::parse).unwrap_or_default(),
            // Names without metadata of their own (`$all`) and deleted
            // streams: the defaults.
            Err(Error::StreamDeleted { .. } | Error::StreamNotFound { .. })
            | Err(Error::InvalidInput(_)) => Acl::default(),
            Err(e) => return Err(e),
        };
        let acl = Arc::new(own.or(fallback));
        let mut streams = self.lock_streams();
        if streams.len() >= CACHE_ENTRIES {
            streams.clear();
        }
        streams.insert(name.to_owned(), (acl.clone(), Instant::now()));
        Ok(acl)
    }

    async fn defaults(&self) -> Result<Arc<Defaults>> {
        if let Some((d, at)) = self.lock_defaults().as_ref() {
            if at.elapsed() < CACHE_TTL {
                return Ok(d.clone());
            }
        }
        let settings = StreamName::new(SETTINGS_STREAM)?;
        let defaults = match self
            .store
            .read_stream(ReadStream::backwards(settings).max_count(1))
            .await
        {
            Ok(events) => match events.first() {
                Some(e) => match serde_json::from_slice::<Value>(&e.data) {
                    Ok(v) => Defaults::from_settings(&v),
                    Err(err) => {
                        tracing::warn!("$settings is not JSON ({err}): using the built-in ACLs");
                        Defaults::built_in()
                    }
                },
                None => Defaults::built_in(),
            },
            Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. }) => Defaults::built_in(),
            Err(e) => return Err(e),
        };
        let defaults = Arc::new(defaults);
        *self.lock_defaults() = Some((defaults.clone(), Instant::now()));
        Ok(defaults)
    }

    /// Drops `stream`'s cached ACL (its metadata changed).
    pub fn forget(&self, stream: &str) {
        self.lock_streams().remove(stream);
    }

    /// Drops every cached ACL (`$settings` changed).
    pub fn forget_settings(&self) {
        *self.lock_defaults() = None;
        self.lock_streams().clear();
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<Acl>, Instant)>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_defaults(&self) -> std::sync::MutexGuard<'_, Option<(Arc<Defaults>, Instant)>> {
        self.defaults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A projection's reads and writes, checked as the user it runs as (the
/// login and groups kept with it; ADR 39). A projection without a creator
/// is the anonymous user: it may do nothing on a secure node.
impl<S: EventStore> factum_projections::Access for Acls<S> {
    fn may<'a>(
        &'a self,
        who: &'a factum_projections::RunAs,
        stream: &'a StreamName,
        right: factum_projections::Right,
    ) -> factum_projections::access::Decision<'a> {
        Box::pin(async move {
            let principal = match &who.login {
                Some(login) => Principal::User(Identity {
                    login: login.clone(),
                    groups: who.groups.clone().into(),
                }),
                None => Principal::Anonymous,
            };
            let permission = match right {
                factum_projections::Right::Read => Permission::Read,
                factum_projections::Right::Write => Permission::Write,
            };
            // `$$x` is governed by `x`'s metadata permissions.
            match stream.as_str().strip_prefix("$$") {
                Some(of) if !of.is_empty() => {
                    let permission = match right {
                        factum_projections::Right::Read => Permission::MetadataRead,
                        factum_projections::Right::Write => Permission::MetadataWrite,
                    };
                    self.allowed(&principal, &StreamName::new(of)?, permission)
                        .await
                }
                _ => self.allowed(&principal, stream, permission).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(login: &str, groups: &[&str]) -> Identity {
        Identity {
            login: login.into(),
            groups: groups
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .into(),
        }
    }

    #[test]
    fn an_acl_falls_back_per_permission() {
        let own = Acl::parse(&json!({"$r": "readers", "$w": ["alice", "writers"], "$d": []}));
        let acl = own.or(&Defaults::built_in().user);
        let (alice, reader, bob) = (
            user("alice", &[]),
            user("r", &["readers"]),
            user("bob", &[]),
        );
        assert!(acl.allows(&alice, Permission::Write));
        assert!(!acl.allows(&alice, Permission::Read));
        assert!(acl.allows(&reader, Permission::Read));
        assert!(
            !acl.allows(&bob, Permission::Delete),
            "an empty list: admins only"
        );
        assert!(acl.allows(&user("root", &["$admins"]), Permission::Delete));
        // $mr was not given: the default (every user).
        assert!(acl.allows(&bob, Permission::MetadataRead));
    }

    #[test]
    fn settings_replace_the_built_in_defaults() {
        let d = Defaults::from_settings(&json!({
            "$systemStreamAcl": {"$r": ["$all"]},
            "$userStreamAcl": {"$w": "writers"}
        }));
        let bob = user("bob", &[]);
        assert!(d.system.allows(&bob, Permission::Read));
        assert!(!d.system.allows(&bob, Permission::Write));
        assert!(!d.user.allows(&bob, Permission::Write));
        assert!(d.user.allows(&bob, Permission::Read));
    }
}
