//! Who a projection runs as, and what that user may read and write
//! (issue 15: "a projection runs as the user who created it"; ADR 39).
//!
//! The projection subsystem knows users only by the [`RunAs`] stored with
//! each projection's settings (login and groups when it was created or
//! last updated, as KurrentDB's `SerializedRunAs`). Whether that user may
//! read or write a stream is the server's stream ACLs' answer: the server
//! hands the subsystem an [`Access`]. Without one (insecure mode, the
//! embedded engine, the system projections) everything is allowed.

use std::future::Future;
use std::pin::Pin;

use factum_core::{Result, StreamName};
use serde::{Deserialize, Serialize};

/// The user a projection runs as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    /// The login; `None` for a projection created without a user
    /// (insecure mode): secure nodes treat it as the anonymous user, who
    /// may read and write nothing.
    pub login: Option<String>,
    /// Its groups (roles) when the projection was created or updated.
    pub groups: Vec<String>,
}

/// What an access check asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// `$r`: read the stream (a projection's source).
    Read,
    /// `$w`: append to it (`emit`, `linkTo`, `copyTo`, `linkStreamTo`, a
    /// result stream of the projection's choosing).
    Write,
}

/// The answer of an access check, to come.
pub type Decision<'a> = Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>>;

/// The stream ACLs a projection's reads and writes are checked against.
pub trait Access: Send + Sync + 'static {
    /// May `who` do `right` on `stream`?
    fn may<'a>(&'a self, who: &'a RunAs, stream: &'a StreamName, right: Right) -> Decision<'a>;
}
