//! Bearer tokens (ADR 34): `authorization: Bearer <JWT>`, signed by a key
//! of a JWKS file the operator configures, checked in the one gate
//! (`auth.rs`) for gRPC and HTTP alike. KurrentDB sells the same as its
//! OAuth plugin.
//!
//! A token is accepted when its header's `kid` names a key of the file (a
//! token without `kid` is accepted only when the file holds exactly one
//! key), its `alg` is one of [`ALGORITHMS`] and fits the key (and the key's
//! own `alg`, when it has one), the signature checks out, and its claims
//! pass: `exp` (required) not past, `nbf` (when present) reached, `iss` the
//! configured issuer, `aud` (or one of them) the configured audience;
//! [`LEEWAY`] of clock skew either way. HMAC keys are never used: a shared
//! secret in a file every node reads would let any node mint tokens.
//!
//! The token's user is its user claim (`sub` by default) and its groups the
//! union of the groups claims (`groups` and `roles` by default; each a
//! string or a list of strings). Such a user need not exist in `$users`:
//! the identity provider vouches for it. `$admins` or `$ops` in the groups
//! make it an administrator or an operator, as for stored users.
//!
//! The JWKS file is looked at (its modification time) at most once per
//! [`RECHECK`], before a token is checked; when it changed it is read
//! again, so keys rotate without a restart. A file that cannot be read or
//! parsed then keeps the keys in use and logs why; at startup it is an
//! error. Checked tokens are cached by their SHA-256 until they expire (at
//! most [`CACHE_TTL`], at most [`CACHE_ENTRIES`]); a reload empties the
//! cache, so a key taken out of the file stops working within a second.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::auth::{Identity, Refused};

/// The signature algorithms accepted: RSA (PKCS#1 v1.5 and PSS), ECDSA
/// P-256 / P-384, Ed25519. Never HMAC.
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// How often at most the JWKS file is looked at for changes.
pub const RECHECK: Duration = Duration::from_secs(1);

/// Clock skew allowed on `exp` and `nbf`, seconds.
pub const LEEWAY: u64 = 30;

/// Longest a checked token is trusted without checking it again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// Cached tokens at most; beyond it the cache starts afresh.
const CACHE_ENTRIES: usize = 10_000;

/// Longest token looked at (a header is at most a few KiB anyway).
const MAX_TOKEN: usize = 16 * 1024;

/// What the operator configures (`factum serve --jwks-file …`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BearerConfig {
    /// The JWKS file (`{"keys": [...]}`).
    pub jwks_file: PathBuf,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry (or include).
    pub audience: String,
    /// The claim naming the user.
    pub user_claim: String,
    /// The claims listing the user's groups (all present are used).
    pub groups_claims: Vec<String>,
}

impl BearerConfig {
    /// `jwks_file`, `issuer` and `audience`, with the default claims: the
    /// user from `sub`, the groups from `groups` and `roles`.
    pub fn new(jwks_file: PathBuf, issuer: String, audience: String) -> Self {
        BearerConfig {
            jwks_file,
            issuer,
            audience,
            user_claim: "sub".into(),
            groups_claims: vec!["groups".into(), "roles".into()],
        }
    }
}

/// Why the JWKS file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The file could not be read.
    #[error("cannot read the JWKS file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a JWKS, or holds no usable key.
    #[error("JWKS file {}: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
}

/// One usable key of the file.
struct Key {
    kid: Option<String>,
    decoding: DecodingKey,
    /// The algorithms this key may verify.
    algorithms: Vec<Algorithm>,
}

/// The algorithms `jwk` can verify: those of its type, narrowed to its own
/// `alg` when it names one; none for HMAC keys and unknown types.
fn algorithms_of(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    let of_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            jsonwebtoken::jwk::EllipticCurve::P256 => &[ES256],
            jsonwebtoken::jwk::EllipticCurve::P384 => &[ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(_) => &[EdDSA],
        AlgorithmParameters::OctetKey(_) => &[],
    };
    let named = jwk.common.key_algorithm.map(|a| match a {
        KeyAlgorithm::RS256 => Some(RS256),
        KeyAlgorithm::RS384 => Some(RS384),
        KeyAlgorithm::RS512 => Some(RS512),
        KeyAlgorithm::PS256 => Some(PS256),
        KeyAlgorithm::PS384 => Some(PS384),
        KeyAlgorithm::PS512 => Some(PS512),
        KeyAlgorithm::ES256 => Some(ES256),
        KeyAlgorithm::ES384 => Some(ES384),
        KeyAlgorithm::EdDSA => Some(EdDSA),
        _ => None,
    });
    of_type
        .iter()
        .copied()
        .filter(|a| match named {
            None => true,
            Some(named) => named == Some(*a),
        })
        .collect()
}

fn load(path: &PathBuf) -> Result<Vec<Key>, JwksError> {
    let text = std::fs::read(path).map_err(|source| JwksError::Read {
        path: path.clone(),
        source,
    })?;
    let invalid = |what: String| JwksError::Invalid {
        path: path.clone(),
        what,
    };
    let set: JwkSet = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("not a JWKS ({{\"keys\": [...]}}): {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithms = algorithms_of(jwk);
        if algorithms.is_empty() {
            tracing::warn!(
                kid = ?jwk.common.key_id,
                file = %path.display(),
                "JWKS key skipped: not an RSA, P-256/P-384 or Ed25519 public key (HMAC keys are never used)"
            );
            continue;
        }
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| {
            invalid(format!(
                "key {:?} cannot be used: {e}",
                jwk.common.key_id.as_deref().unwrap_or("(no kid)")
            ))
        })?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            decoding,
            algorithms,
        });
    }
    if keys.is_empty() {
        return Err(invalid("no usable key".into()));
    }
    Ok(keys)
}

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The keys in use and where they came from.
struct Loaded {
    keys: Arc<Vec<Key>>,
    mtime: Option<SystemTime>,
    checked: Instant,
}

/// A token checked: its identity, until when.
struct Checked {
    identity: Identity,
    until: Instant,
}

/// Checks bearer tokens against the configured JWKS file.
pub struct Bearer {
    config: BearerConfig,
    loaded: Mutex<Loaded>,
    cache: Mutex<HashMap<[u8; 32], Checked>>,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Bearer {
    /// Loads the JWKS file; an error here is a startup error.
    pub fn new(config: BearerConfig) -> Result<Bearer, JwksError> {
        let mtime = mtime(&config.jwks_file);
        let keys = Arc::new(load(&config.jwks_file)?);
        Ok(Bearer {
            config,
            loaded: Mutex::new(Loaded {
                keys,
                mtime,
                checked: Instant::now(),
            }),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BearerConfig {
        &self.config
    }

    /// The keys for the next check: reloaded first when the file changed
    /// (looked at once per [`RECHECK`]).
    fn keys(&self) -> Arc<Vec<Key>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let now = mtime(&self.config.jwks_file);
            if now != loaded.mtime {
                // Either way: a failed reload is tried again when the file
                // changes again, not on every check.
                loaded.mtime = now;
                match load(&self.config.jwks_file) {
                    Ok(keys) => {
                        tracing::info!(file = %self.config.jwks_file.display(), keys = keys.len(), "JWKS reloaded");
                        loaded.keys = Arc::new(keys);
                        // Tokens of a key taken out must stop working.
                        self.cache
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clear();
                    }
                    Err(e) => tracing::warn!(
                        "the JWKS file changed but cannot be used ({e}); still using the previous keys"
                    ),
                }
            }
        }
        loaded.keys.clone()
    }

    /// Checks `token` (the text after `Bearer `): its identity, or why not.
    pub fn verify(&self, token: &str) -> Result<Identity, Refused> {
        if token.len() > MAX_TOKEN {
            return Err(Refused("bearer token too long".into()));
        }
        // The keys first: a reload empties the cache.
        let keys = self.keys();
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = cache.get(&digest) {
                if Instant::now() < c.until {
                    return Ok(c.identity.clone());
                }
            }
        }
        let (identity, exp) = self.check(token, &keys)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let left = Duration::from_secs(exp.saturating_sub(now)).min(CACHE_TTL);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(
            digest,
            Checked {
                identity: identity.clone(),
                until: Instant::now() + left,
            },
        );
        Ok(identity)
    }

    /// The signature and claims of `token`: its identity and `exp`.
    fn check(&self, token: &str, keys: &[Key]) -> Result<(Identity, u64), Refused> {
        let refuse = |why: String| Refused(format!("bearer token refused: {why}"));
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| refuse(format!("not a JWT: {e}")))?;
        let key = match &header.kid {
            Some(kid) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or_else(|| refuse(format!("no key {kid:?} in the JWKS file")))?,
            None if keys.len() == 1 => &keys[0],
            None => return Err(refuse("no kid, and the JWKS file has several keys".into())),
        };
        if !key.algorithms.contains(&header.alg) {
            return Err(refuse(format!(
                "algorithm {:?} does not fit key {:?}",
                header.alg,
                key.kid.as_deref().unwrap_or("(no kid)")
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = LEEWAY;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.decoding,
            &validation,
        )
        .map_err(|e| refuse(e.to_string()))?;
        let claims = data.claims;
        let login = claims
            .get(&self.config.user_claim)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                refuse(format!(
                    "no {:?} claim (a string) to name the user",
                    self.config.user_claim
                ))
            })?
            .to_owned();
        let mut groups: Vec<String> = Vec::new();
        for name in &self.config.groups_claims {
            match claims.get(name) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(g)) => groups.push(g.clone()),
                Some(serde_json::Value::Array(list)) => {
                    for g in list {
                        match g.as_str() {
                            Some(g) => groups.push(g.to_owned()),
                            None => {
                                return Err(refuse(format!(
                                    "claim {name:?} holds something else than strings"
                                )))
                            }
                        }
                    }
                }
                Some(_) => {
                    return Err(refuse(format!(
                        "claim {name:?} is neither a string nor a list of strings"
                    )))
                }
            }
        }
        groups.sort();
        groups.dedup();
        let exp = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        Ok((
            Identity {
                login,
                groups: groups.into(),
            },
            exp,
        ))
    }
}
