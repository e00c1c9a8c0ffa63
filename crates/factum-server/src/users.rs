//! Users, kept in the store itself (ADR 31), as KurrentDB keeps them.
//!
//! Each user is a stream `$user-<login>` whose last event (`$UserCreated`,
//! then `$UserUpdated` for every change) holds its details: login, full
//! name, groups, disabled, and an argon2id password hash (PHC string, salt
//! included). `$users` gets one `$User` event (data: the login) per user
//! created, so every user can be listed. Deleting a user soft-deletes its
//! stream; creating the login again starts it afresh. These streams are
//! managed (`factum_core::managed`, ADR 16): clients cannot write them, and
//! every change goes through [`Users`], which writes through the store
//! directly with expected revisions, so two concurrent changes to one user
//! cannot both win.
//!
//! Verifying a password costs an argon2id hash (tens of milliseconds, tens
//! of MiB, on the blocking pool): a hash per request would cap throughput.
//! Verified credentials are cached as a keyed digest (HMAC-SHA-256 with a
//! key made at startup, so the cache holds no password) per login, for at
//! most [`CACHE_TTL`]; every change to a user through this node drops its
//! entry at once (password change or reset, disable, delete, groups), and
//! the TTL bounds how long another node sharing a PostgreSQL store may
//! accept credentials changed elsewhere.
//!
//! On first start (no `$user-admin` / `$user-ops` yet) `admin` (group
//! `$admins`) and `ops` (group `$ops`) are created with the password
//! `changeit`, or `FACTUM_DEFAULT_ADMIN_PASSWORD` /
//! `FACTUM_DEFAULT_OPS_PASSWORD` from the environment (never a flag, which
//! `ps` would show); a warning is logged at every start while a default
//! password is still in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::HeaderMap;
use factum_core::{
    managed, Error, EventData, EventStore, ExpectedRevision, ReadStream, StreamName, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::auth::{AuthFuture, Authenticator, Identity, Principal, Refused, ADMINS, OPS};

/// How long verified credentials are trusted without a new hash.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// Cached credentials at most; beyond it the cache starts afresh.
const CACHE_ENTRIES: usize = 10_000;

/// The password of `admin` and `ops` when the environment sets none.
pub const DEFAULT_PASSWORD: &str = "changeit";

/// Longest login name and password accepted.
const MAX_FIELD: usize = 1024;

/// The event type of a user's first event.
const USER_CREATED: &str = "$UserCreated";
/// The event type of every later change.
const USER_UPDATED: &str = "$UserUpdated";
/// The event type in `$users`.
const USER_LISTED: &str = "$User";

/// A user as stored (JSON, camelCase as KurrentDB's `UserData`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserData {
    login_name: String,
    full_name: String,
    groups: Vec<String>,
    /// argon2id, PHC string format.
    password_hash: String,
    disabled: bool,
}

/// A user as the Users service shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserDetails {
    /// Login name.
    pub login_name: String,
    /// Display name.
    pub full_name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Disabled users cannot authenticate.
    pub disabled: bool,
    /// When the user last changed.
    pub last_updated: Timestamp,
}

/// Why a user operation failed (KurrentDB's answers, `grpc_users.rs`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// No such user (never created, or deleted).
    #[error("User '{0}' is not found.")]
    NotFound(String),
    /// The login is taken, or the user changed concurrently.
    #[error("Conflict: user '{0}' exists or changed concurrently.")]
    Conflict(String),
    /// The caller may not do this (or gave the wrong current password).
    #[error("Access Denied")]
    AccessDenied,
    /// A login or password that cannot be used.
    #[error("{0}")]
    InvalidInput(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// One login's verified credentials.
struct Verified {
    digest: ring::hmac::Tag,
    identity: Identity,
    at: Instant,
}

/// The users of a store, and the authenticator that checks them.
pub struct Users<S> {
    store: Arc<S>,
    cache: Mutex<HashMap<String, Verified>>,
    /// Identities of logins named by client certificates (no password to
    /// check: the user must exist and be enabled), as long as `cache`.
    certified: Mutex<HashMap<String, (Identity, Instant)>>,
    key: ring::hmac::Key,
    /// Password checks that miss the cache, at most [`CHECKS_AT_ONCE`] at
    /// a time: each holds ~19 MiB for tens of milliseconds, and clients
    /// opening many connections at once with the same credentials then
    /// hash once and find the cache filled, instead of hashing once each.
    checks: tokio::sync::Semaphore,
}

/// Password hashes computed at once (the memory of a login storm).
const CHECKS_AT_ONCE: usize = 2;

fn check_login(login: &str) -> Result<StreamName, UserError> {
    if login.is_empty() || login.len() > MAX_FIELD {
        return Err(UserError::InvalidInput(
            "a login name must be 1 to 1024 bytes".into(),
        ));
    }
    if login.contains(':') || login.chars().any(char::is_control) {
        return Err(UserError::InvalidInput(
            "a login name may not contain ':' or control characters (Basic credentials could not carry it)".into(),
        ));
    }
    managed::user_stream(login).map_err(|e| UserError::InvalidInput(e.to_string()))
}

fn check_password(password: &str) -> Result<(), UserError> {
    if password.is_empty() || password.len() > MAX_FIELD {
        return Err(UserError::InvalidInput(
            "a password must be 1 to 1024 bytes".into(),
        ));
    }
    Ok(())
}

/// An argon2id hash of `password` with a fresh salt (on the blocking pool).
async fn hash(password: String) -> Result<String, UserError> {
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
            .map_err(|_| UserError::InvalidInput("no randomness for a salt".into()))?;
        let salt = SaltString::encode_b64(&salt)
            .map_err(|e| UserError::InvalidInput(format!("salt: {e}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| UserError::InvalidInput(format!("cannot hash the password: {e}")))
    })
    .await
    .map_err(|e| {
        UserError::Store(Error::unavailable(
            factum_core::UnavailableReason::Busy,
            format!("hashing task failed: {e}"),
        ))
    })?
}

/// True when `password` matches the PHC `stored` hash (on the blocking pool).
async fn verify(password: String, stored: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

impl<S: EventStore> Users<S> {
    /// The users of `store` (the store itself, not the clients' view: the
    /// user streams are managed).
    pub fn new(store: Arc<S>) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .expect("the system's random number generator works");
        Users {
            store,
            cache: Mutex::new(HashMap::new()),
            certified: Mutex::new(HashMap::new()),
            key,
            checks: tokio::sync::Semaphore::new(CHECKS_AT_ONCE),
        }
    }

    /// The last event of `$user-<login>`: its data and revision, or `None`.
    async fn load(&self, login: &str) -> Result<Option<(UserData, u64, Timestamp)>, UserError> {
        let stream = check_login(login)?;
        let read = self
            .store
            .read_stream(ReadStream::backwards(stream).max_count(1))
            .await;
        let events = match read {
            Ok(events) => events,
            Err(Error::StreamNotFound { .. } | Error::StreamDeleted { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(event) = events.into_iter().next() else {
            return Ok(None);
        };
        let data: UserData = event.json()?;
        Ok(Some((data, event.revision.0, event.created)))
    }

    async fn write(
        &self,
        data: &UserData,
        expected: ExpectedRevision,
        event_type: &str,
    ) -> Result<(), UserError> {
        let stream = check_login(&data.login_name)?;
        let event = EventData::json(event_type, data)?;
        match self.store.append(stream, expected, vec![event]).await {
            Ok(_) => {
                self.forget(&data.login_name);
                Ok(())
            }
            Err(Error::WrongExpectedVersion { .. }) => {
                Err(UserError::Conflict(data.login_name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Drops `login`'s cached credentials.
    fn forget(&self, login: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(login);
        self.certified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(login);
    }

    /// The identity of `login`, named by a verified client certificate.
    async fn certified(&self, login: &str) -> Result<Identity, Refused> {
        if let Some((identity, at)) = self
            .certified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(login)
        {
            if at.elapsed() < CACHE_TTL {
                return Ok(identity.clone());
            }
        }
        let identity = match self.load(login).await {
            Ok(Some((data, _, _))) if !data.disabled => Identity {
                login: login.to_owned(),
                groups: data.groups.into(),
            },
            Ok(Some(_)) => return Err(Refused(format!("user '{login}' is disabled"))),
            Ok(None) | Err(UserError::InvalidInput(_)) => {
                return Err(Refused(format!(
                    "the client certificate names user '{login}', who does not exist"
                )))
            }
            Err(e) => return Err(Refused(format!("cannot check user '{login}': {e}"))),
        };
        let mut certified = self.certified.lock().unwrap_or_else(|e| e.into_inner());
        if certified.len() >= CACHE_ENTRIES {
            certified.clear();
        }
        certified.insert(login.to_owned(), (identity.clone(), Instant::now()));
        Ok(identity)
    }

    /// Creates `admin` and `ops` when they do not exist; warns while either
    /// still has the default password.
    pub async fn ensure_defaults(
        &self,
        admin_password: Option<String>,
        ops_password: Option<String>,
    ) -> Result<(), UserError> {
        for (login, full_name, group, password) in [
            ("admin", "KurrentDB Administrator", ADMINS, admin_password),
            ("ops", "KurrentDB Operations", OPS, ops_password),
        ] {
            match self.load(login).await? {
                Some((data, _, _)) => {
                    if verify(DEFAULT_PASSWORD.to_owned(), data.password_hash).await {
                        tracing::warn!(
                            "user '{login}' still has the default password: change it \
                             (Users.ChangePassword, or FACTUM_DEFAULT_{}_PASSWORD before the first start)",
                            login.to_uppercase()
                        );
                    }
                }
                None => {
                    let default = password.is_none();
                    let password = password.unwrap_or_else(|| DEFAULT_PASSWORD.to_owned());
                    check_password(&password)?;
                    let data = UserData {
                        login_name: login.to_owned(),
                        full_name: full_name.to_owned(),
                        groups: vec![group.to_owned()],
                        password_hash: hash(password).await?,
                        disabled: false,
                    };
                    match self
                        .write(&data, ExpectedRevision::NoStream, USER_CREATED)
                        .await
                    {
                        // Another node sharing the store created it first.
                        Ok(()) | Err(UserError::Conflict(_)) => {}
                        Err(e) => return Err(e),
                    }
                    self.list(login).await?;
                    if default {
                        tracing::warn!(
                            "created user '{login}' with the default password '{DEFAULT_PASSWORD}': change it"
                        );
                    } else {
                        tracing::info!("created user '{login}'");
                    }
                }
            }
        }
        Ok(())
    }

    async fn list(&self, login: &str) -> Result<(), UserError> {
        let users = StreamName::new(managed::USERS_STREAM)?;
        let event = EventData::binary(USER_LISTED, login.as_bytes().to_vec());
        self.store
            .append(users, ExpectedRevision::Any, vec![event])
            .await?;
        Ok(())
    }

    /// `login`'s identity when these credentials were verified lately.
    fn cached(&self, login: &str, credentials: &str) -> Option<Identity> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let v = cache.get(login)?;
        // Constant time: the digest is compared by ring.
        (v.at.elapsed() < CACHE_TTL
            && ring::hmac::verify(&self.key, credentials.as_bytes(), v.digest.as_ref()).is_ok())
        .then(|| v.identity.clone())
    }

    /// Checks `login`'s password: its identity, or why not.
    pub async fn verify(&self, login: &str, password: &str) -> Result<Identity, Refused> {
        let credentials = format!("{login}\0{password}");
        if let Some(identity) = self.cached(login, &credentials) {
            return Ok(identity);
        }
        let _permit = self
            .checks
            .acquire()
            .await
            .map_err(|_| Refused("the server is shutting down".into()))?;
        // Another request with the same credentials may have just checked them.
        if let Some(identity) = self.cached(login, &credentials) {
            return Ok(identity);
        }
        let digest = ring::hmac::sign(&self.key, credentials.as_bytes());
        let refused = || Refused(format!("invalid credentials for user '{login}'"));
        let data = match self.load(login).await {
            Ok(Some((data, _, _))) => data,
            Ok(None) | Err(UserError::InvalidInput(_)) => return Err(refused()),
            Err(e) => return Err(Refused(format!("cannot check user '{login}': {e}"))),
        };
        if data.disabled {
            return Err(Refused(format!("user '{login}' is disabled")));
        }
        if !verify(password.to_owned(), data.password_hash).await {
            return Err(refused());
        }
        let identity = Identity {
            login: login.to_owned(),
            groups: data.groups.into(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(
            login.to_owned(),
            Verified {
                digest,
                identity: identity.clone(),
                at: Instant::now(),
            },
        );
        Ok(identity)
    }

    /// Creates a user (admins only).
    pub async fn create(
        &self,
        by: &Principal,
        login: &str,
        password: &str,
        full_name: &str,
        groups: Vec<String>,
    ) -> Result<(), UserError> {
        admin(by)?;
        check_login(login)?;
        check_password(password)?;
        let data = UserData {
            login_name: login.to_owned(),
            full_name: full_name.to_owned(),
            groups,
            password_hash: hash(password.to_owned()).await?,
            disabled: false,
        };
        self.write(&data, ExpectedRevision::NoStream, USER_CREATED)
            .await?;
        self.list(login).await
    }

    /// Applies `change` to an existing user and writes the result.
    async fn change(
        &self,
        login: &str,
        change: impl FnOnce(&mut UserData),
    ) -> Result<(), UserError> {
        let (mut data, revision, _) = self
            .load(login)
            .await?
            .ok_or_else(|| UserError::NotFound(login.to_owned()))?;
        change(&mut data);
        self.write(
            &data,
            ExpectedRevision::Exact(factum_core::StreamRevision(revision)),
            USER_UPDATED,
        )
        .await
    }

    /// New full name and groups (admins only).
    pub async fn update(
        &self,
        by: &Principal,
        login: &str,
        full_name: &str,
        groups: Vec<String>,
    ) -> Result<(), UserError> {
        admin(by)?;
        self.change(login, |d| {
            d.full_name = full_name.to_owned();
            d.groups = groups;
        })
        .await
    }

    /// Disables or enables a user (admins only).
    pub async fn set_disabled(
        &self,
        by: &Principal,
        login: &str,
        disabled: bool,
    ) -> Result<(), UserError> {
        admin(by)?;
        self.change(login, |d| d.disabled = disabled).await
    }

    /// Deletes a user (admins only).
    pub async fn delete(&self, by: &Principal, login: &str) -> Result<(), UserError> {
        admin(by)?;
        let stream = check_login(login)?;
        let (_, revision, _) = self
            .load(login)
            .await?
            .ok_or_else(|| UserError::NotFound(login.to_owned()))?;
        let deleted = self
            .store
            .delete_stream(
                stream,
                ExpectedRevision::Exact(factum_core::StreamRevision(revision)),
            )
            .await;
        self.forget(login);
        match deleted {
            Ok(_) => Ok(()),
            Err(Error::WrongExpectedVersion { .. }) => Err(UserError::Conflict(login.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// A new password without the current one (admins only).
    pub async fn reset_password(
        &self,
        by: &Principal,
        login: &str,
        new_password: &str,
    ) -> Result<(), UserError> {
        admin(by)?;
        check_password(new_password)?;
        let hashed = hash(new_password.to_owned()).await?;
        self.change(login, |d| d.password_hash = hashed).await
    }

    /// A user's own password change: the current password must match
    /// (admins may change anyone's, still with the current password).
    pub async fn change_password(
        &self,
        by: &Principal,
        login: &str,
        current: &str,
        new_password: &str,
    ) -> Result<(), UserError> {
        match by {
            Principal::User(who) if who.login == login || who.is_admin() => {}
            _ => return Err(UserError::AccessDenied),
        }
        check_password(new_password)?;
        let (data, _, _) = self
            .load(login)
            .await?
            .ok_or_else(|| UserError::NotFound(login.to_owned()))?;
        if !verify(current.to_owned(), data.password_hash).await {
            return Err(UserError::AccessDenied);
        }
        let hashed = hash(new_password.to_owned()).await?;
        self.change(login, |d| d.password_hash = hashed).await
    }

    /// One user's details (admins, or the user itself).
    pub async fn details(&self, by: &Principal, login: &str) -> Result<UserDetails, UserError> {
        match by {
            Principal::User(who) if who.login == login || who.is_admin() => {}
            _ => return Err(UserError::AccessDenied),
        }
        let (data, _, created) = self
            .load(login)
            .await?
            .ok_or_else(|| UserError::NotFound(login.to_owned()))?;
        Ok(UserDetails {
            login_name: data.login_name,
            full_name: data.full_name,
            groups: data.groups,
            disabled: data.disabled,
            last_updated: created,
        })
    }

    /// Every user, in the order they were first created (admins only).
    pub async fn all(&self, by: &Principal) -> Result<Vec<UserDetails>, UserError> {
        admin(by)?;
        let users = StreamName::new(managed::USERS_STREAM)?;
        let listed = match self.store.read_stream(ReadStream::forwards(users)).await {
            Ok(events) => events,
            Err(Error::StreamNotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for event in listed {
            let Ok(login) = std::str::from_utf8(&event.data) else {
                continue;
            };
            if !seen.insert(login.to_owned()) {
                continue;
            }
            match self.details(by, login).await {
                Ok(d) => out.push(d),
                Err(UserError::NotFound(_) | UserError::InvalidInput(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

fn admin(by: &Principal) -> Result<(), UserError> {
    match by {
        Principal::User(who) if who.is_admin() => Ok(()),
        _ => Err(UserError::AccessDenied),
    }
}

impl<S: EventStore> Authenticator for Users<S> {
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> AuthFuture<'a> {
        Box::pin(async move {
            match crate::auth::basic_credentials(headers)? {
                None => Ok(Principal::Anonymous),
                Some((login, password)) => {
                    self.verify(&login, &password).await.map(Principal::User)
                }
            }
        })
    }

    fn certificate<'a>(&'a self, login: &'a str) -> AuthFuture<'a> {
        Box::pin(async move { self.certified(login).await.map(Principal::User) })
    }

    fn required(&self) -> bool {
        true
    }
}
