//! The authentication seam. Insecure mode accepts any or no credentials;
//! users, TLS and ACLs arrive in a later issue behind this trait.

use axum::http::HeaderMap;

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// No credentials were checked (insecure mode).
    Anonymous,
    /// An authenticated user.
    User(String),
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(pub String);

/// Decides who a request comes from, from its headers (gRPC metadata and
/// HTTP headers alike: `authorization: Basic …`).
pub trait Authenticator: Send + Sync + 'static {
    /// The principal, or why the request is refused.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Refused>;
}

/// Insecure mode: every request is accepted, credentials or not.
#[derive(Clone, Copy, Debug, Default)]
pub struct Insecure;

impl Authenticator for Insecure {
    fn authenticate(&self, _headers: &HeaderMap) -> Result<Principal, Refused> {
        Ok(Principal::Anonymous)
    }
}
