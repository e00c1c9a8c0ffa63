//! Settings of an object-storage archive: where it is, how to sign in, and
//! how long to wait before calling it unreachable.
//!
//! Every field left unset falls back to the standard AWS environment
//! variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`), then to
//! AWS's defaults. The time limits are ours: object_store's defaults retry
//! for three minutes, and a read of an archived segment must fail within
//! seconds, naming the archive, when the archive cannot be reached.

use std::time::Duration;

/// Settings for [`crate::open_archive`] and [`crate::S3Archive`]. Build one
/// with [`ArchiveOptions::default`] and the `with_*` methods; a local
/// directory archive ignores them all.
#[derive(Clone)]
#[non_exhaustive]
pub struct ArchiveOptions {
    /// The S3 endpoint, for S3-compatible stores (MinIO, Ceph, R2, moto):
    /// `https://minio.example:9000`. Unset: `AWS_ENDPOINT_URL`, else AWS.
    /// Requests go path-style (`endpoint/bucket/key`) to a custom endpoint.
    pub endpoint: Option<String>,
    /// The region. Unset: `AWS_REGION` or `AWS_DEFAULT_REGION`, else
    /// `us-east-1` (what most S3-compatible stores expect).
    pub region: Option<String>,
    /// The access key id. Unset: `AWS_ACCESS_KEY_ID`, else the instance's
    /// or container's role. When set, the environment's credentials
    /// (`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` too) are not used.
    pub access_key_id: Option<String>,
    /// The secret access key. Unset: `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// A session token for temporary credentials. Unset: `AWS_SESSION_TOKEN`.
    pub session_token: Option<String>,
    /// Allow a plain `http://` endpoint (a test server, a store on a
    /// private network). Off: only `https://`, unless `AWS_ALLOW_HTTP=true`.
    pub allow_http: bool,
    /// How long one connection attempt may take (DNS and TCP and TLS).
    pub connect_timeout: Duration,
    /// How long one request may take, its body included: bounds a server
    /// that accepts connections but never answers, and must leave room to
    /// move one part of an upload (8 MiB) or one ranged read.
    pub request_timeout: Duration,
    /// How many times a failed request is retried (connection errors,
    /// 5xx, throttling); 0 disables retries.
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt, so an
    /// unreachable archive fails within about `retry_timeout +
    /// connect_timeout`.
    pub retry_timeout: Duration,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            allow_http: false,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_timeout: Duration::from_secs(5),
        }
    }
}

impl ArchiveOptions {
    /// Sets [`ArchiveOptions::endpoint`].
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets [`ArchiveOptions::region`].
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets [`ArchiveOptions::access_key_id`] and
    /// [`ArchiveOptions::secret_access_key`].
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key.into());
        self
    }

    /// Sets [`ArchiveOptions::session_token`].
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(token.into());
        self
    }

    /// Sets [`ArchiveOptions::allow_http`].
    pub fn with_allow_http(mut self, allow_http: bool) -> Self {
        self.allow_http = allow_http;
        self
    }

    /// Sets [`ArchiveOptions::connect_timeout`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ArchiveOptions::request_timeout`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets [`ArchiveOptions::max_retries`] and
    /// [`ArchiveOptions::retry_timeout`].
    pub fn with_retries(mut self, max_retries: usize, retry_timeout: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_timeout = retry_timeout;
        self
    }
}

/// Secrets stay out of logs and panic messages.
impl std::fmt::Debug for ArchiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |set: bool| if set { Some("<redacted>") } else { None };
        f.debug_struct("ArchiveOptions")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &redacted(self.secret_access_key.is_some()),
            )
            .field("session_token", &redacted(self.session_token.is_some()))
            .field("allow_http", &self.allow_http)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let options = ArchiveOptions::default()
            .with_credentials("AKIDEXAMPLE", "wJalrXUtnFEMI")
            .with_session_token("FwoGZXIvYXdzE");
        let shown = format!("{options:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("FwoGZXIvYXdzE"), "{shown}");
    }
}
