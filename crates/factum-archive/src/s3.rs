//! [`S3Archive`]: the archive in S3 or any S3-compatible store, on the
//! `object_store` crate.
//!
//! Objects are `prefix/name` in one bucket. An upload sends the whole file:
//! one PUT up to [`MULTIPART_THRESHOLD`], a multipart upload above it (parts
//! of [`PART_SIZE`], a few in flight), and then a HEAD checks that the
//! stored object has every byte sent; a failed multipart upload is aborted so
//! no parts linger. Reads are ranged GETs; a deletion is one DELETE (S3
//! answers it alike whether or not the object was there). Every failure to reach the store
//! or a refusal by it is `Unavailable` (reason `Storage`) with a message
//! naming the archive (bucket, prefix, endpoint) and the object, after
//! bounded retries ([`ArchiveOptions`]): a read of an archived segment fails
//! clearly within seconds instead of hanging or answering partly.
//!
//! Requests are signed with the payload's SHA-256 (SigV4), which S3 checks
//! on receipt: a body damaged on the way is refused, never stored. With the
//! size check after the upload, an object that exists holds the file.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use factum_core::error::with_causes;
use factum_core::{Error, Result, UnavailableReason};
use factum_engine::{Archive, ArchivedObject};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, PutPayload, RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use crate::options::ArchiveOptions;
use crate::runtime::BlockingRuntime;

/// Files larger than this go up as multipart uploads; smaller ones in one
/// PUT (one request, no part bookkeeping).
pub const MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;

/// The size of each part of a multipart upload (S3 wants at least 5 MiB
/// for every part but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts uploaded at once: bounds the memory of one upload to about
/// `(PARTS_IN_FLIGHT + 1) * PART_SIZE`.
const PARTS_IN_FLIGHT: usize = 2;

/// How much of the file one read takes while feeding a multipart upload.
const READ_CHUNK: usize = 1024 * 1024;

/// Where an archive lives in S3: a bucket and a key prefix, parsed from
/// `s3://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (empty: the bucket's
    /// top level).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket` or `s3://bucket/some/prefix` (a trailing `/` is
    /// allowed).
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            Error::InvalidInput(format!(
                "archive {url}: an S3 archive is given as s3://bucket/prefix"
            ))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::InvalidInput(format!(
                "archive {url}: no bucket (expected s3://bucket/prefix)"
            )));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == "." || part == "..") {
            return Err(Error::InvalidInput(format!(
                "archive {url}: the prefix may not contain . or .. parts"
            )));
        }
        if prefix.contains("//") {
            return Err(Error::InvalidInput(format!(
                "archive {url}: the prefix has an empty part (//)"
            )));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// `s3://bucket/prefix` again.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// An archive in an S3 bucket under a prefix (see the module doc).
#[derive(Debug)]
pub struct S3Archive {
    inner: Arc<Inner>,
    runtime: BlockingRuntime,
}

/// What the requests need, shared with the futures on the runtime.
#[derive(Debug)]
struct Inner {
    store: Arc<dyn ObjectStore>,
    /// The key prefix as an object_store path (empty: the bucket's top).
    prefix: ObjectPath,
    /// `s3://bucket/prefix at https://endpoint`, for messages.
    describe: String,
}

impl S3Archive {
    /// Opens the archive at `url` (`s3://bucket/prefix`). Nothing is sent
    /// yet: a wrong endpoint or credentials show on the first request.
    pub fn open(url: &str, options: &ArchiveOptions) -> Result<Self> {
        let location = S3Location::parse(url)?;
        let invalid = |what: String| Error::InvalidInput(format!("archive {url}: {what}"));

        // Environment first, explicit settings over it. Client settings go
        // through `with_config`, key by key: `with_client_options` would
        // replace the whole set, dropping AWS_ALLOW_HTTP, proxies and
        // anything set before it.
        let mut builder = from_environment(options.access_key_id.is_some())
            .with_bucket_name(&location.bucket)
            // SigV4 with the payload's SHA-256 (object_store's default, kept
            // whatever AWS_UNSIGNED_PAYLOAD says): S3 refuses a PUT or a
            // part whose body does not match, so what it stores is what was
            // read from the file.
            .with_unsigned_payload(false);
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        match (&options.access_key_id, &options.secret_access_key) {
            (Some(id), Some(secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
            }
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "an access key id and a secret access key go together; one is missing".into(),
                ))
            }
        }
        if let Some(token) = &options.session_token {
            builder = builder.with_token(token);
        }
        if options.allow_http {
            builder = builder.with_allow_http(true);
        }
        builder = builder
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                millis(options.connect_timeout),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                millis(options.request_timeout),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(100),
                    max_backoff: std::time::Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: options.max_retries,
                retry_timeout: options.retry_timeout,
            });

        let region = builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        let allow_http = builder
            .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|value| value.eq_ignore_ascii_case("true"));
        if let Some(endpoint) = &endpoint {
            if endpoint.starts_with("http://") && !allow_http {
                return Err(invalid(format!(
                    "endpoint {endpoint} is plain http: allow it explicitly (allow_http, or AWS_ALLOW_HTTP=true)"
                )));
            }
        }
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let store = builder
            .build()
            .map_err(|e| invalid(format!("at {endpoint}: {}", with_causes(&e))))?;

        Ok(S3Archive {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                prefix: ObjectPath::from(location.prefix.as_str()),
                describe: format!("{} at {endpoint}", location.url()),
            }),
            runtime: BlockingRuntime::new()?,
        })
    }

    /// Runs one request on the archive's runtime, waiting for its answer.
    fn run<T, F>(&self, request: impl FnOnce(Arc<Inner>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.runtime
            .run(&self.inner.describe, request(Arc::clone(&self.inner)))
    }
}

impl Archive for S3Archive {
    fn put(&self, name: &str, path: &Path) -> Result<()> {
        let name = name.to_string();
        let file = path.to_path_buf();
        self.run(|inner| async move { inner.upload(&name, &file).await })
    }

    fn size(&self, name: &str) -> Result<Option<u64>> {
        let name = name.to_string();
        self.run(|inner| async move { inner.size(&name).await })
    }

    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Bytes> {
        let name = name.to_string();
        self.run(move |inner| async move { inner.get_range(&name, offset, len).await })
    }

    fn list(&self) -> Result<Vec<ArchivedObject>> {
        self.run(|inner| async move { inner.list().await })
    }

    fn delete(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.run(|inner| async move { inner.delete(&name).await })
    }

    fn describe(&self) -> String {
        self.inner.describe.clone()
    }
}

impl Inner {
    /// The key of object `name`. Names are plain file names that
    /// object_store keeps as they are: a `/` would put the object in a
    /// "directory" that [`Archive::list`] does not see, and a name it
    /// percent-encodes would be listed under another name.
    fn location(&self, name: &str) -> Result<ObjectPath> {
        let part = PathPart::from(name);
        if name.is_empty() || name == "." || name == ".." || part.as_ref() != name {
            return Err(Error::InvalidInput(format!(
                "archive {}: object name {name:?} is not a plain file name",
                self.describe
            )));
        }
        Ok(self.prefix.child(part))
    }

    /// The error for a failed request about `name`.
    fn failed(&self, doing: &str, name: &str, e: &object_store::Error) -> Error {
        let detail = match e {
            object_store::Error::NotFound { .. } => format!("object {name} not found"),
            _ => with_causes(e),
        };
        Error::unavailable(
            UnavailableReason::Storage,
            format!("archive {}: {doing} {name}: {detail}", self.describe),
        )
    }

    async fn upload(&self, name: &str, file: &Path) -> Result<()> {
        let location = self.location(name)?;
        let local = |doing: &str, e: std::io::Error| {
            Error::io(
                format!("{doing} {} to archive it as {name}", file.display()),
                e,
            )
        };
        let mut source = tokio::fs::File::open(file)
            .await
            .map_err(|e| local("opening", e))?;
        let length = source
            .metadata()
            .await
            .map_err(|e| local("reading the size of", e))?
            .len();

        let sent = if length > MULTIPART_THRESHOLD {
            self.upload_in_parts(name, &location, &mut source, file)
                .await?
        } else {
            let mut content = Vec::with_capacity(length as usize);
            source
                .read_to_end(&mut content)
                .await
                .map_err(|e| local("reading", e))?;
            let sent = content.len() as u64;
            self.store
                .put(&location, PutPayload::from(content))
                .await
                .map_err(|e| self.failed("uploading", name, &e))?;
            sent
        };

        let stored = self
            .store
            .head(&location)
            .await
            .map_err(|e| self.failed("checking the upload of", name, &e))?
            .size;
        if stored != sent {
            return Err(Error::unavailable(
                UnavailableReason::Storage,
                format!(
                    "archive {}: object {name} holds {stored} bytes after an upload of {sent} bytes from {}",
                    self.describe,
                    file.display()
                ),
            ));
        }
        Ok(())
    }

    /// A multipart upload of `source`; returns the bytes sent. On any
    /// failure the upload is aborted (best effort) so its parts do not
    /// linger, billed, in the bucket.
    async fn upload_in_parts(
        &self,
        name: &str,
        location: &ObjectPath,
        source: &mut tokio::fs::File,
        file: &Path,
    ) -> Result<u64> {
        let upload = self
            .store
            .put_multipart(location)
            .await
            .map_err(|e| self.failed("starting the upload of", name, &e))?;
        let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buffer = vec![0u8; READ_CHUNK];
        let mut sent = 0u64;
        let fed: Result<()> = async {
            loop {
                parts
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.failed("uploading a part of", name, &e))?;
                let read = source.read(&mut buffer).await.map_err(|e| {
                    Error::io(
                        format!("reading {} to archive it as {name}", file.display()),
                        e,
                    )
                })?;
                if read == 0 {
                    return Ok(());
                }
                parts.write(&buffer[..read]);
                sent += read as u64;
            }
        }
        .await;
        match fed {
            Ok(()) => {
                parts
                    .finish()
                    .await
                    .map_err(|e| self.failed("completing the upload of", name, &e))?;
                Ok(sent)
            }
            Err(error) => {
                if let Err(abort) = parts.abort().await {
                    tracing::warn!(
                        archive = %self.describe,
                        object = name,
                        error = %with_causes(&abort),
                        "could not abort a failed multipart upload; its parts stay until the bucket's lifecycle rule removes them"
                    );
                }
                Err(error)
            }
        }
    }

    async fn size(&self, name: &str) -> Result<Option<u64>> {
        let location = self.location(name)?;
        match self.store.head(&location).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("reading the size of", name, &e)),
        }
    }

    async fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Bytes> {
        let location = self.location(name)?;
        let end = offset.checked_add(len as u64).ok_or_else(|| {
            Error::InvalidInput(format!(
                "archive {}: reading {name}: range {offset} + {len} overflows",
                self.describe
            ))
        })?;
        let range: Range<u64> = offset..end;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let reading = format!("reading bytes {offset}..{end} of");
        match self.store.get_range(&location, range).await {
            Ok(bytes) if bytes.len() <= len => Ok(bytes),
            Ok(bytes) => Err(Error::unavailable(
                UnavailableReason::Storage,
                format!(
                    "archive {}: {reading} {name}: the store answered {} bytes",
                    self.describe,
                    bytes.len()
                ),
            )),
            Err(e @ object_store::Error::NotFound { .. }) => Err(self.failed(&reading, name, &e)),
            Err(e) => {
                // S3 refuses a range that starts at or past the end (416);
                // the trait answers fewer bytes at the end, here none. A HEAD
                // decides, asked only after a 416: after a transport failure
                // it would double the wait. object_store does not expose the
                // status in a type, only in its message; should that text
                // change, such reads fail (tests/s3.rs says so), never
                // answer wrongly.
                if is_range_not_satisfiable(&e) {
                    if let Ok(meta) = self.store.head(&location).await {
                        if offset >= meta.size {
                            return Ok(Bytes::new());
                        }
                    }
                }
                Err(self.failed(&reading, name, &e))
            }
        }
    }

    async fn list(&self) -> Result<Vec<ArchivedObject>> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        // With a delimiter: the objects directly under the prefix, which
        // is all an archive writes (names are plain file names).
        let listing = self.store.list_with_delimiter(prefix).await.map_err(|e| {
            Error::unavailable(
                UnavailableReason::Storage,
                format!("archive {}: listing: {}", self.describe, with_causes(&e)),
            )
        })?;
        let mut objects: Vec<ArchivedObject> = listing
            .objects
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_string();
                Some(ArchivedObject {
                    name,
                    size: meta.size,
                    modified: Some(meta.last_modified.into()),
                })
            })
            .collect();
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let location = self.location(name)?;
        // S3 answers a DELETE of a missing key with 204, as of one that was
        // there: that is the trait's "missing is Ok". A 404 means more
        // than a missing object (no such bucket) and fails.
        self.store
            .delete(&location)
            .await
            .map_err(|e| self.failed("deleting", name, &e))
    }
}

/// A builder with the `AWS_*` environment variables, as
/// `AmazonS3Builder::from_env` reads them, but without the environment's
/// credentials when the settings bring their own: an `AWS_SESSION_TOKEN`
/// left from another identity would spoil an explicit key pair.
fn from_environment(explicit_credentials: bool) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new();
    for (variable, value) in std::env::vars_os() {
        let (Some(variable), Some(value)) = (variable.to_str(), value.to_str()) else {
            continue;
        };
        if !variable.starts_with("AWS_") {
            continue;
        }
        let Ok(key) = variable.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() else {
            continue;
        };
        let is_credential = matches!(
            key,
            AmazonS3ConfigKey::AccessKeyId
                | AmazonS3ConfigKey::SecretAccessKey
                | AmazonS3ConfigKey::Token
        );
        if !(explicit_credentials && is_credential) {
            builder = builder.with_config(key, value);
        }
    }
    builder
}

/// A duration as object_store's configuration strings take it.
fn millis(duration: std::time::Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// How object_store's message shows a 416 answer (the http crate's text
/// for the status).
const RANGE_NOT_SATISFIABLE: &str = "416 Range Not Satisfiable";

/// Whether the store answered 416 Range Not Satisfiable.
fn is_range_not_satisfiable(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. })
        && with_causes(e).contains(RANGE_NOT_SATISFIABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let parsed = S3Location::parse("s3://archive/factum/node-1/").unwrap();
        assert_eq!(parsed.bucket, "archive");
        assert_eq!(parsed.prefix, "factum/node-1");
        assert_eq!(parsed.url(), "s3://archive/factum/node-1");

        let top = S3Location::parse("s3://archive").unwrap();
        assert_eq!(top.prefix, "");
        assert_eq!(top.url(), "s3://archive");
    }

    #[test]
    fn refuses_malformed_urls() {
        for url in [
            "s3://",
            "s3:///prefix",
            "s3://b/a/../c",
            "s3://b/a//c",
            "gs://b/p",
        ] {
            let error = S3Location::parse(url).unwrap_err().to_string();
            assert!(error.contains(url), "{url}: {error}");
        }
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let options = ArchiveOptions::default()
            .with_endpoint("http://127.0.0.1:9")
            .with_credentials("id", "secret");
        let error = S3Archive::open("s3://bucket/p", &options)
            .unwrap_err()
            .to_string();
        assert!(error.contains("allow_http"), "{error}");
        S3Archive::open("s3://bucket/p", &options.with_allow_http(true)).unwrap();
    }

    #[test]
    fn one_half_of_a_key_is_refused() {
        let options = ArchiveOptions {
            access_key_id: Some("id".into()),
            ..ArchiveOptions::default()
        };
        let error = S3Archive::open("s3://bucket/p", &options)
            .unwrap_err()
            .to_string();
        assert!(error.contains("secret access key"), "{error}");
    }

    #[test]
    fn explicit_credentials_shut_out_the_environments() {
        // Only this test sets the variable, and no other test reads a token.
        std::env::set_var("AWS_SESSION_TOKEN", "token-of-another-identity");
        let token = |builder: AmazonS3Builder| builder.get_config_value(&AmazonS3ConfigKey::Token);
        assert_eq!(token(from_environment(true)), None);
        assert_eq!(
            token(from_environment(false)).as_deref(),
            Some("token-of-another-identity")
        );
        std::env::remove_var("AWS_SESSION_TOKEN");
    }

    #[test]
    fn names_must_be_plain() {
        let options = ArchiveOptions::default()
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_credentials("id", "secret");
        let archive = S3Archive::open("s3://bucket/p", &options).unwrap();
        for name in ["", "a/b", "..", ".", "a%b", "a\\b", "tab\t"] {
            let error = archive.size(name).unwrap_err();
            assert!(matches!(error, Error::InvalidInput(_)), "{name:?}: {error}");
        }
        assert_eq!(
            archive.describe(),
            "s3://bucket/p at http://127.0.0.1:9",
            "describe names bucket, prefix and endpoint"
        );
    }
}
