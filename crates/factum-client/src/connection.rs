//! Where and how the client connects (ADR 34): the address, TLS and the
//! credentials sent with every call.
//!
//! [`ConnectionSettings::parse`] reads the forms KurrentDB's clients read —
//! `esdb://[login:password@]host:port[,…][?tls=…&tlsCAFile=…&tlsVerifyCert=…]`
//! (the first host is used; `esdb+discover://` is refused: there is no
//! gossip discovery here) — and plain `http://host:port` / `https://host:port`.
//! As in KurrentDB's clients, `esdb://` is TLS unless `tls=false`; without
//! `tlsCAFile` the server is checked against the system's trusted roots.
//! Unknown settings are refused, so a misspelt `tlsCaFlie` cannot silently
//! turn verification off.
//!
//! TLS is rustls with the `ring` provider, the one the server uses (ADR 30),
//! on a connector of our own: ALPN `h2`, TCP_NODELAY, and
//! `tlsVerifyCert=false` (encryption without knowing whom to: for tests
//! only) done as a verifier that still checks the handshake's signatures.
//! Credentials go as `authorization: Basic …` on every call, as KurrentDB's
//! clients send them, through a tonic interceptor around the channel.

use std::path::PathBuf;
use std::sync::Arc;

use factum_core::{Error, Result, UnavailableReason};
use tokio_rustls::rustls;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

/// The transport every call goes through: one HTTP/2 connection, with the
/// credentials added to each request.
pub(crate) type Transport = InterceptedService<Channel, Credentials>;

/// How the server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verify {
    /// Against the CA certificates (PEM) in this file (`tlsCAFile`).
    CaFile(PathBuf),
    /// Against the system's trusted roots.
    SystemRoots,
    /// Not at all (`tlsVerifyCert=false`): the connection is encrypted but
    /// anyone may be at the other end. For tests and development only.
    Nothing,
}

/// Where and how to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// `host:port`.
    pub address: String,
    /// TLS, and how the server's certificate is checked; `None`: plain text.
    pub tls: Option<Verify>,
    /// Login and password sent with every call (HTTP Basic).
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("address", &self.address)
            .field("tls", &self.tls)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(login, _)| (login, "…")),
            )
            .finish()
    }
}

fn invalid(what: impl Into<String>) -> Error {
    Error::InvalidInput(what.into())
}

/// `%XX` escapes of a connection string's user info.
fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(format!("bad %-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("{s:?} is not UTF-8 once decoded")))
}

fn boolean(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(format!("{key}={value}: use true or false"))),
    }
}

impl ConnectionSettings {
    /// Reads a connection string (see the module doc).
    pub fn parse(connection: &str) -> Result<ConnectionSettings> {
        let bad = |why: &str| invalid(format!("bad connection string {connection:?}: {why}"));
        if connection.starts_with("esdb+discover://")
            || connection.starts_with("kurrentdb+discover://")
        {
            return Err(Error::Unsupported(
                "discovery (esdb+discover://) is not supported: name the node with esdb://host:port".into(),
            ));
        }
        let (scheme, rest) = connection
            .split_once("://")
            .ok_or_else(|| bad("expected esdb://, http:// or https://"))?;
        let (default_tls, connection_string) = match scheme.to_ascii_lowercase().as_str() {
            "esdb" | "kurrentdb" | "kdb" => (true, true),
            "https" => (true, false),
            "http" => (false, false),
            _ => return Err(bad("expected esdb://, http:// or https://")),
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (login, password) = u
                    .split_once(':')
                    .ok_or_else(|| bad("credentials are login:password"))?;
                Some((percent_decode(login)?, percent_decode(password)?))
            }
        };
        let address = hosts.split(',').next().unwrap_or(hosts).to_owned();
        if address.is_empty() {
            return Err(bad("no host"));
        }
        let address = if address.starts_with('[') {
            // [::1] or [::1]:2113
            if address.contains("]:") {
                address
            } else {
                format!("{address}:2113")
            }
        } else if address.contains(':') {
            address
        } else {
            format!("{address}:2113")
        };
        let mut tls = default_tls;
        let mut ca_file = None;
        let mut verify_cert = true;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            if !connection_string {
                return Err(bad("settings (?…) belong to esdb:// connection strings"));
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key.to_ascii_lowercase().as_str() {
                "tls" => tls = boolean(key, value)?,
                "tlscafile" => ca_file = Some(PathBuf::from(percent_decode(value)?)),
                "tlsverifycert" => verify_cert = boolean(key, value)?,
                // Settings of KurrentDB's clients that change nothing here
                // (one node, our own retry policy and deadlines).
                "connectionname"
                | "maxdiscoverattempts"
                | "discoveryinterval"
                | "gossiptimeout"
                | "nodepreference"
                | "keepaliveinterval"
                | "keepalivetimeout"
                | "defaultdeadline"
                | "throwonappendfailure" => {}
                other => {
                    return Err(bad(&format!(
                        "unknown setting {other:?} (known: tls, tlsCAFile, tlsVerifyCert)"
                    )))
                }
            }
        }
        let tls = match (tls, ca_file, verify_cert) {
            (false, Some(_), _) => return Err(bad("tlsCAFile needs tls=true")),
            (false, None, _) => None,
            (true, _, false) => Some(Verify::Nothing),
            (true, Some(ca), true) => Some(Verify::CaFile(ca)),
            (true, None, true) => Some(Verify::SystemRoots),
        };
        Ok(ConnectionSettings {
            address,
            tls,
            credentials,
        })
    }

    /// The same settings with these credentials.
    pub fn with_credentials(
        mut self,
        login: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some((login.into(), password.into()));
        self
    }

    /// The host part of the address (brackets of an IPv6 address removed).
    fn host(&self) -> &str {
        let host = match self.address.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => &self.address,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Opens the connection.
    pub(crate) async fn connect(&self) -> Result<Transport> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", self.address);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| invalid(format!("bad address {:?}: {e}", self.address)))?
            .tcp_nodelay(true)
            // Reads stream many events: HTTP/2's default 64 KiB window
            // would stall the server between window updates.
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            // The server writes each HTTP/2 data frame with its own
            // system call: frames of a whole 64 KiB chunk of answers
            // instead of 16 KiB ones (ADR 46; grpc-read-all 0.27-0.29 ->
            // 0.28-0.32 of the engine in the same runs).
            .max_frame_size(Some(1 << 20));
        let unavailable = |e: &dyn std::fmt::Display| {
            Error::unavailable(
                UnavailableReason::Connection,
                format!("cannot connect to {url}: {e}"),
            )
        };
        let channel = match &self.tls {
            None => endpoint.connect().await.map_err(|e| {
                // tonic's error says little; its source says why.
                let why = std::error::Error::source(&e)
                    .map(|s| format!("{e}: {s}"))
                    .unwrap_or_else(|| e.to_string());
                unavailable(&why)
            })?,
            Some(verify) => {
                let config = Arc::new(client_config(verify)?);
                let name = rustls::pki_types::ServerName::try_from(self.host().to_owned())
                    .map_err(|e| invalid(format!("bad host name {:?}: {e}", self.host())))?;
                let connector = tower::service_fn(move |uri: Uri| {
                    let (config, name) = (config.clone(), name.clone());
                    async move {
                        let host = uri.host().unwrap_or("localhost");
                        let host = host.trim_start_matches('[').trim_end_matches(']');
                        let port = uri.port_u16().unwrap_or(2113);
                        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
                        tcp.set_nodelay(true)?;
                        let tls = tokio_rustls::TlsConnector::from(config)
                            .connect(name, tcp)
                            .await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                    }
                });
                endpoint
                    .connect_with_connector(connector)
                    .await
                    .map_err(|e| {
                        let why = std::error::Error::source(&e)
                            .map(|s| format!("{e}: {s}"))
                            .unwrap_or_else(|| e.to_string());
                        unavailable(&why)
                    })?
            }
        };
        Ok(InterceptedService::new(
            channel,
            Credentials::new(self.credentials.as_ref())?,
        ))
    }
}

/// The crypto provider: ring, as the server (ADR 30).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `verify`, offering ALPN `h2` (gRPC).
fn client_config(verify: &Verify) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?;
    let mut config = match verify {
        Verify::CaFile(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("cannot read tlsCAFile {}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    invalid(format!("tlsCAFile {}: unreadable PEM: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    invalid(format!(
                        "tlsCAFile {}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(invalid(format!(
                    "tlsCAFile {}: no CERTIFICATE in the file",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::SystemRoots => {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(invalid(format!(
                    "no trusted root certificates found on this system ({:?}): give the server's CA with tlsCAFile=…",
                    found.errors
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// `tlsVerifyCert=false`: any certificate is taken, but the handshake's
/// signatures are still checked (the peer holds the key of the
/// certificate it sent).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `authorization` header every call carries (none without
/// credentials). Made once: each call clones a shared value.
#[derive(Clone, Debug)]
pub(crate) struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    fn new(credentials: Option<&(String, String)>) -> Result<Credentials> {
        use base64::Engine as _;
        let Some((login, password)) = credentials else {
            return Ok(Credentials(None));
        };
        if login.contains(':') {
            return Err(invalid("a login name cannot hold ':' (HTTP Basic)"));
        }
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{login}:{password}"));
        let mut value: MetadataValue<Ascii> = format!("Basic {token}")
            .parse()
            .map_err(|_| invalid("credentials that cannot be sent as a header"))?;
        value.set_sensitive(true);
        Ok(Credentials(Some(value)))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kurrentdb_connection_strings() {
        let s = ConnectionSettings::parse(
            "esdb://admin:changeit@localhost:2113?tls=true&tlsCAFile=/tmp/ca.crt",
        )
        .unwrap();
        assert_eq!(s.address, "localhost:2113");
        assert_eq!(s.tls, Some(Verify::CaFile("/tmp/ca.crt".into())));
        assert_eq!(s.credentials, Some(("admin".into(), "changeit".into())));
        assert_eq!(s.host(), "localhost");

        // TLS by default, as KurrentDB's clients; the first of several hosts.
        let s = ConnectionSettings::parse("esdb://a.example:1,b.example:2").unwrap();
        assert_eq!(s.address, "a.example:1");
        assert_eq!(s.tls, Some(Verify::SystemRoots));
        assert_eq!(s.credentials, None);

        let s = ConnectionSettings::parse("esdb://127.0.0.1:2113?tls=false").unwrap();
        assert_eq!(s.tls, None);
        let s = ConnectionSettings::parse("esdb://h?tlsVerifyCert=false").unwrap();
        assert_eq!(
            (s.address.as_str(), s.tls),
            ("h:2113", Some(Verify::Nothing))
        );
        // Keys are case-insensitive (KurrentDB writes tlsCaFile and tlsCAFile).
        let s = ConnectionSettings::parse("esdb://u:p%40ss@[::1]:2113?TLSCAFILE=c.pem").unwrap();
        assert_eq!(s.credentials, Some(("u".into(), "p@ss".into())));
        assert_eq!(s.host(), "::1");
        assert_eq!(s.tls, Some(Verify::CaFile("c.pem".into())));

        let s = ConnectionSettings::parse("http://127.0.0.1:2113").unwrap();
        assert_eq!(s.tls, None);
        let s = ConnectionSettings::parse("https://localhost:2113").unwrap();
        assert_eq!(s.tls, Some(Verify::SystemRoots));

        for bad in [
            "esdb://h?tlsCaFlie=x",
            "esdb://h?tls=maybe",
            "esdb://h?tls=false&tlsCAFile=x",
            "esdb://user@h",
            "tcp://h:1113",
            "esdb://",
            "http://h:1?tls=false",
        ] {
            assert!(
                matches!(ConnectionSettings::parse(bad), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            ConnectionSettings::parse("esdb+discover://h"),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn debug_hides_the_password() {
        let s = ConnectionSettings::parse("esdb://admin:secret@h?tls=false").unwrap();
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn credentials_are_a_basic_header() {
        let c = Credentials::new(Some(&("admin".into(), "changeit".into()))).unwrap();
        assert_eq!(c.0.unwrap().to_str().unwrap(), "Basic YWRtaW46Y2hhbmdlaXQ=");
        assert!(Credentials::new(Some(&("a:b".into(), "p".into()))).is_err());
    }
}
