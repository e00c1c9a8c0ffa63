//! TLS on the server's one port (ADR 30): rustls with the `ring` provider
//! (the one factum-postgres already uses, so no second provider is
//! compiled), ALPN `h2` and `http/1.1`, certificates reloaded when their
//! files change.
//!
//! [`TlsFiles`] names the PEM files: the node's certificate (a chain is
//! allowed: the node's own first, then intermediates), its private key, and
//! optionally the CA whose client certificates are accepted. [`Reloading`]
//! loads them once at startup (a bad file is a startup error) and, before a
//! handshake at most once per [`RECHECK`], compares the files' modification
//! times with those it loaded: when one changed it loads all again. A
//! reload that fails (a half-written file, a key that does not match) keeps
//! the configuration in use and logs why, so rotating certificates never
//! takes the node down; the next check tries again.
//!
//! Client certificates are optional even with a CA: clients that present
//! none authenticate with credentials instead (as KurrentDB). One that is
//! presented must chain to the CA, else the handshake fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::rustls;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// How often at most the certificate files are looked at for changes.
pub const RECHECK: Duration = Duration::from_secs(1);

/// The PEM files a secure node serves with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (its own certificate first).
    pub cert: PathBuf,
    /// The private key of the node's certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates whose client certificates are accepted; `None`:
    /// clients present none.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the combination (a key that does not match the
    /// certificate, an unusable CA).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The one crypto provider of the product binary (ADR 24, ADR 30).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Reads the files and builds the server configuration.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let certs = read_certs(&self.cert)?;
        let key_pem = read(&self.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: self.key.clone(),
            what: format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        })?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| TlsError::Pem {
                        path: ca.clone(),
                        what: format!("not a usable CA certificate: {e}"),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            TlsError::Config(format!(
                "{} and {}: {e}",
                self.cert.display(),
                self.key.display()
            ))
        })?;
        // gRPC needs HTTP/2; browsers and curl may speak either. hyper
        // tells them apart by the preface whatever was negotiated.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        let mut paths = vec![&self.cert, &self.key];
        paths.extend(self.client_ca.as_ref());
        paths
            .into_iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("unreadable PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// The configuration in use and where it came from.
struct Loaded {
    config: Arc<ServerConfig>,
    mtimes: Vec<Option<SystemTime>>,
    checked: Instant,
}

/// The server's TLS configuration, reloaded when its files change.
pub struct Reloading {
    files: TlsFiles,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish()
    }
}

impl Reloading {
    /// Loads `files`; an error here is a startup error.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let mtimes = files.mtimes();
        let config = Arc::new(files.load()?);
        Ok(Reloading {
            files,
            loaded: Mutex::new(Loaded {
                config,
                mtimes,
                checked: Instant::now(),
            }),
        })
    }

    /// The files served.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The configuration for the next handshake: reloaded first when a file
    /// changed since the last load (looked at once per [`RECHECK`]).
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let mtimes = self.files.mtimes();
            if mtimes != loaded.mtimes {
                // Remember these times either way: a failed reload is
                // retried when the files change again, not on every check.
                loaded.mtimes = mtimes;
                match self.files.load() {
                    Ok(config) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificates reloaded");
                        loaded.config = Arc::new(config);
                    }
                    Err(e) => tracing::warn!(
                        "TLS certificates changed but cannot be loaded ({e}); still serving the previous ones"
                    ),
                }
            }
        }
        loaded.config.clone()
    }
}

/// The subject common name of a (verified) client certificate: the login
/// of the user it authenticates (ADR 31).
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
