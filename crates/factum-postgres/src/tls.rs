//! TLS to PostgreSQL with libpq's meanings of `sslmode` and `sslrootcert`
//! (ADR 24), through rustls with the `ring` provider.
//!
//! tokio-postgres parses only `sslmode` `disable`, `prefer` and `require`
//! and refuses `sslrootcert`, so [`parse`] takes both out of the connection
//! string (URL or key=value form), hands tokio-postgres the rest unchanged
//! and builds the certificate check libpq would make:
//!
//! | `sslmode`     | TLS                       | server certificate checked |
//! |---------------|---------------------------|----------------------------|
//! | `disable`     | never                     | -                          |
//! | `prefer`      | if the server offers it   | chain, if a root file      |
//! | `require`     | always                    | chain, if a root file      |
//! | `verify-ca`   | always                    | chain                      |
//! | `verify-full` | always                    | chain and host name        |
//!
//! The root file is `sslrootcert`, else libpq's default
//! `~/.postgresql/root.crt` when it exists (libpq's rule: `require` with a
//! root file behaves as `verify-ca`). `sslmode` defaults to `prefer`, as in
//! libpq, and is ignored for Unix sockets, which PostgreSQL never encrypts.
//! SCRAM logins over TLS are bound to the session (`tls-server-end-point`).

use std::future::Future;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use factum_core::{Error, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::Host;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// libpq's `sslmode` values (all but `allow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(Error::InvalidInput(
                    "PostgreSQL connection string: sslmode=allow is not supported: use prefer \
                     (TLS when the server offers it) or disable"
                        .into(),
                ))
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "PostgreSQL connection string: sslmode must be disable, prefer, require, \
                     verify-ca or verify-full, not {other:?}"
                )))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A connection string as tokio-postgres settings and the TLS connector
/// its `sslmode` and `sslrootcert` ask for.
pub(crate) fn parse(url: &str) -> Result<(tokio_postgres::Config, Tls)> {
    let options = take_tls_options(url)?;
    let mut pg: tokio_postgres::Config = options
        .rest
        .parse()
        .map_err(|e| Error::InvalidInput(format!("PostgreSQL URL: {}", crate::describe(&e))))?;
    let mode = match options.sslmode.as_deref() {
        Some(m) => SslMode::parse(m)?,
        None => SslMode::Prefer,
    };
    let unix_only = pg.get_hostaddrs().is_empty()
        && !pg.get_hosts().is_empty()
        && pg.get_hosts().iter().all(|h| !matches!(h, Host::Tcp(_)));
    let mode = if unix_only { SslMode::Disable } else { mode };
    let tls = Tls::new(mode, options.sslrootcert.as_deref())?;
    pg.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok((pg, tls))
}

/// A connection string without its TLS options, and their values.
#[derive(Debug, PartialEq, Eq)]
struct TlsOptions {
    rest: String,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string; the last
/// of each counts, as in libpq. The rest is kept as written. A string this
/// cannot read is passed on whole, for tokio-postgres to say what is wrong.
fn take_tls_options(s: &str) -> Result<TlsOptions> {
    let mut found = TlsOptions {
        rest: s.to_string(),
        sslmode: None,
        sslrootcert: None,
    };
    let is_url = s.starts_with("postgres://") || s.starts_with("postgresql://");
    let kept = if is_url {
        let Some((base, query)) = s.split_once('?') else {
            return Ok(found);
        };
        let mut kept = Vec::new();
        // Empty pairs (`?&a=b`, a trailing `&`) are dropped.
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |v: &str| -> Result<String> {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .map(|v| v.into_owned())
                    .map_err(|_| {
                        Error::InvalidInput(format!(
                            "PostgreSQL URL: {key}'s value is not UTF-8 once percent-decoded"
                        ))
                    })
            };
            match decode(key)?.as_str() {
                "sslmode" => found.sslmode = Some(decode(value)?),
                "sslrootcert" => found.sslrootcert = Some(decode(value)?),
                _ => kept.push(pair),
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let Some(pairs) = key_values(s) else {
            return Ok(found);
        };
        let mut kept = Vec::new();
        for (key, value, raw) in pairs {
            match key {
                "sslmode" => found.sslmode = Some(value),
                "sslrootcert" => found.sslrootcert = Some(value),
                _ => kept.push(raw),
            }
        }
        kept.join(" ")
    };
    found.rest = kept;
    Ok(found)
}

/// The `key = value` pairs of a libpq key=value string: each key, its value
/// unquoted and unescaped, and the pair as written. `None` if malformed.
fn key_values(s: &str) -> Option<Vec<(&str, String, &str)>> {
    let mut pairs = Vec::new();
    let mut chars = s.char_indices().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return Some(pairs);
        };
        while chars
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key_end = chars.peek().map_or(s.len(), |&(i, _)| i);
        let key = &s[start..key_end];
        skip_ws(&mut chars);
        if key.is_empty() || chars.next()?.1 != '=' {
            return None;
        }
        skip_ws(&mut chars);
        let mut value = String::new();
        if chars.next_if(|&(_, c)| c == '\'').is_some() {
            loop {
                match chars.next()?.1 {
                    '\'' => break,
                    '\\' => value.push(chars.next()?.1),
                    c => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?.1);
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        pairs.push((key, value, &s[start..end]));
    }
}

/// libpq's default root file, `~/.postgresql/root.crt`, if it exists.
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    let path = Path::new(&home).join(".postgresql").join("root.crt");
    path.is_file().then_some(path)
}

/// The CA certificates in a PEM file.
fn load_roots(path: &Path) -> Result<RootCertStore> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::InvalidInput(format!("PostgreSQL sslrootcert {}: {e}", path.display()))
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        let cert = cert.map_err(|e| bad(&e))?;
        roots.add(cert).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no PEM certificate in it"));
    }
    Ok(roots)
}

/// Connects over TLS as one `sslmode` says. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Tls {
    config: Arc<rustls::ClientConfig>,
    check_name: bool,
    /// What a certificate of an unknown CA means here (rustls says only
    /// "UnknownIssuer").
    unknown_issuer: Option<Arc<str>>,
}

impl Tls {
    fn new(mode: SslMode, sslrootcert: Option<&str>) -> Result<Tls> {
        let roots = match (mode, sslrootcert) {
            // Nothing is read that would not be used.
            (SslMode::Disable, _) => None,
            (_, Some("system")) => {
                return Err(Error::InvalidInput(
                    "PostgreSQL connection string: sslrootcert=system (the operating system's \
                     trust store) is not supported: name a file of CA certificates"
                        .into(),
                ))
            }
            // Unlike libpq, a named file that is missing is an error in
            // every mode, never a silent "no check".
            (_, Some(path)) => Some((load_roots(Path::new(path))?, PathBuf::from(path))),
            (_, None) => default_root_file()
                .map(|p| load_roots(&p).map(|roots| (roots, p)))
                .transpose()?,
        };
        if roots.is_none() && matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(Error::InvalidInput(format!(
                "PostgreSQL connection string: sslmode={} needs sslrootcert=FILE, the CA \
                 certificates to trust (libpq's default ~/.postgresql/root.crt does not exist)",
                mode.name()
            )));
        }
        let check_name = mode == SslMode::VerifyFull;
        let unknown_issuer = roots.as_ref().map(|(_, path)| {
            format!(
                "the server's certificate is not signed by a CA in {} (sslmode={}): \
                 check sslrootcert",
                path.display(),
                mode.name()
            )
            .into()
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Verifier {
            roots: roots.map(|(roots, _)| Arc::new(roots)),
            check_name,
            provider: provider.clone(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidInput(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // What libpq 17 sends; PostgreSQL 17 needs it for direct TLS.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Tls {
            config: Arc::new(config),
            check_name,
            unknown_issuer,
        })
    }
}

/// The server certificate check of one `sslmode`: nothing, the chain up to
/// a root, or the chain and the host name. Handshake signatures are always
/// checked (the server proves it holds the certificate's key).
#[derive(Debug)]
struct Verifier {
    /// `None`: the certificate is not checked.
    roots: Option<Arc<RootCertStore>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if self.check_name {
                rustls::client::verify_server_name(&cert, server_name)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<Connect> {
        let name = match ServerName::try_from(host.to_string()) {
            Ok(name) => name,
            // Not checked: any name will do, and an address sends no SNI.
            Err(_) if !self.check_name => ServerName::IpAddress(Ipv4Addr::UNSPECIFIED.into()),
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "host {host:?} cannot be checked against the server's certificate \
                         (sslmode=verify-full): {e}"
                    ),
                ))
            }
        };
        Ok(Connect {
            config: self.config.clone(),
            name,
            unknown_issuer: self.unknown_issuer.clone(),
        })
    }
}

/// One TLS handshake to a host.
pub(crate) struct Connect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    unknown_issuer: Option<Arc<str>>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map_err(|e| {
                    let unknown = e.get_ref().and_then(|e| e.downcast_ref()).is_some_and(
                        |e: &rustls::Error| {
                            *e == rustls::Error::InvalidCertificate(
                                rustls::CertificateError::UnknownIssuer,
                            )
                        },
                    );
                    match self.unknown_issuer {
                        Some(m) if unknown => io::Error::new(io::ErrorKind::InvalidData, &*m),
                        _ => e,
                    }
                })?;
            Ok(TlsStream(stream))
        })
    }
}

/// A TLS session to the server.
pub(crate) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    /// `tls-server-end-point` (RFC 5929), which SCRAM-SHA-256-PLUS binds
    /// the password exchange to: a man in the middle that terminated TLS
    /// (possible whenever the certificate is not checked) shows another
    /// certificate, and the server refuses the login.
    fn channel_binding(&self) -> ChannelBinding {
        let cert = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match cert.and_then(|c| server_end_point(c)) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point` of a certificate: its hash with the
/// hash of its signature algorithm, SHA-256 for MD5 and SHA-1. `None` for
/// algorithms without one (Ed25519, RSA-PSS), as PostgreSQL has none then.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest::{digest, SHA256, SHA384, SHA512};
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const RSA_SHA1_OIW: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1d];
    let oid = signature_algorithm(cert)?;
    let algorithm = match oid {
        _ if oid == ECDSA_SHA1 || oid == RSA_SHA1_OIW => &SHA256,
        [prefix @ .., last] if prefix == RSA => match last {
            4 | 5 | 11 => &SHA256, // MD5, SHA-1, SHA-256 with RSA
            12 => &SHA384,
            13 => &SHA512,
            _ => return None,
        },
        [prefix @ .., last] if prefix == ECDSA_SHA2 => match last {
            2 => &SHA256,
            3 => &SHA384,
            4 => &SHA512,
            _ => return None,
        },
        _ => return None,
    };
    Some(digest(algorithm, cert).as_ref().to_vec())
}

/// The OID of a DER certificate's `signatureAlgorithm` (the second element
/// of the outer SEQUENCE).
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der(cert, 0x30)?;
    let (_tbs, rest) = der(certificate, 0x30)?;
    let (algorithm, _) = der(rest, 0x30)?;
    Some(der(algorithm, 0x06)?.0)
}

/// One DER element with `tag` at the start of `input`: its contents and
/// what follows it.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if found != tag {
        return None;
    }
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| len << 8 | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's outline: SEQUENCE { tbs, SEQUENCE { OID }, BIT STRING }.
    fn cert_with(oid: &[u8]) -> Vec<u8> {
        let mut algorithm = vec![0x06, oid.len() as u8];
        algorithm.extend_from_slice(oid);
        let mut body = vec![0x30, 0x03, 0x02, 0x01, 0x02]; // tbs: SEQUENCE { INTEGER 2 }
        body.extend([0x30, algorithm.len() as u8]);
        body.extend(algorithm);
        body.extend([0x03, 0x02, 0x00, 0xff]);
        // A long-form length, as real certificates have.
        let mut cert = vec![0x30, 0x81, body.len() as u8];
        cert.extend(body);
        cert
    }

    #[test]
    fn channel_binding_hashes_with_the_signature_hash() {
        use ring::digest::{digest, SHA256, SHA384, SHA512};
        let rsa = |n: u8| vec![0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, n];
        let ecdsa = |n: u8| vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, n];
        for (oid, hash) in [
            (rsa(5), Some(&SHA256)), // SHA-1 is upgraded
            (rsa(11), Some(&SHA256)),
            (rsa(12), Some(&SHA384)),
            (rsa(13), Some(&SHA512)),
            (rsa(10), None), // RSA-PSS
            (ecdsa(2), Some(&SHA256)),
            (ecdsa(3), Some(&SHA384)),
            (ecdsa(4), Some(&SHA512)),
            (
                vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],
                Some(&SHA256),
            ),
            (vec![0x2b, 0x65, 0x70], None), // Ed25519
        ] {
            let cert = cert_with(&oid);
            assert_eq!(
                server_end_point(&cert),
                hash.map(|h| digest(h, &cert).as_ref().to_vec()),
                "{oid:x?}"
            );
        }
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x31, 0x00],
        ] {
            assert_eq!(server_end_point(bad), None);
        }
        let cert = cert_with(&ecdsa(2));
        assert_eq!(server_end_point(&cert[..cert.len() - 1]), None);
    }

    fn take(s: &str) -> (String, Option<String>, Option<String>) {
        let t = take_tls_options(s).unwrap();
        (t.rest, t.sslmode, t.sslrootcert)
    }

    #[test]
    fn url_options_are_taken_out_and_the_rest_kept() {
        assert_eq!(
            take("postgres://u@h:5/db?application_name=a&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca%20x.crt&connect_timeout=3"),
            (
                "postgres://u@h:5/db?application_name=a&connect_timeout=3".into(),
                Some("verify-full".into()),
                Some("/tmp/ca x.crt".into())
            )
        );
        assert_eq!(
            take("postgresql://h/db?sslmode=require&sslmode=disable"),
            ("postgresql://h/db".into(), Some("disable".into()), None)
        );
        assert_eq!(
            take("postgres://h/db?&sslmode=disable&"),
            ("postgres://h/db".into(), Some("disable".into()), None)
        );
        assert_eq!(
            take("postgres://h/db"),
            ("postgres://h/db".into(), None, None)
        );
    }

    #[test]
    fn key_value_options_are_taken_out_with_quotes_and_escapes() {
        assert_eq!(
            take("host=h  sslmode = 'verify-ca' dbname='my db' sslrootcert='/a b/c\\'d.crt' user=u\\ x"),
            (
                "host=h dbname='my db' user=u\\ x".into(),
                Some("verify-ca".into()),
                Some("/a b/c'd.crt".into())
            )
        );
        assert_eq!(
            take("sslrootcert=/x\\ y.crt"),
            (String::new(), None, Some("/x y.crt".into()))
        );
        // Malformed: passed on whole, for tokio-postgres to judge.
        for bad in ["host", "host=", "host='x", "=x"] {
            assert_eq!(take(bad), (bad.to_string(), None, None), "{bad}");
        }
    }

    fn mode_of(url: &str) -> tokio_postgres::config::SslMode {
        parse(url).map(|(pg, _)| pg.get_ssl_mode()).unwrap()
    }

    fn refusal(url: &str) -> String {
        match parse(url) {
            Err(Error::InvalidInput(m)) => m,
            Err(e) => panic!("{url}: {e:?}"),
            Ok(_) => panic!("{url} was accepted"),
        }
    }

    #[test]
    fn modes_map_to_what_tokio_postgres_negotiates() {
        use tokio_postgres::config::SslMode as Pg;
        assert_eq!(mode_of("postgres://h/db"), Pg::Prefer);
        assert_eq!(mode_of("postgres://h/db?sslmode=disable"), Pg::Disable);
        assert_eq!(mode_of("host=h sslmode=require"), Pg::Require);
        // Unix sockets are never encrypted (libpq ignores sslmode there).
        assert_eq!(
            mode_of("host=/var/run/postgresql sslmode=require"),
            Pg::Disable
        );
        assert_eq!(
            mode_of("host=/run/x hostaddr=127.0.0.1 sslmode=require"),
            Pg::Require
        );
    }

    #[test]
    fn bad_settings_are_refused_with_what_to_do() {
        assert!(refusal("postgres://h/db?sslmode=verify").contains("verify-full"));
        assert!(refusal("sslmode=allow host=h").contains("use prefer"));
        let m = refusal("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt");
        assert!(m.contains("/nonexistent/ca.crt"), "{m}");
        let m = refusal("host=h sslmode=require sslrootcert=system");
        assert!(m.contains("not supported"), "{m}");
        // Disable reads nothing.
        assert!(parse("host=h sslmode=disable sslrootcert=/nonexistent/ca.crt").is_ok());
        let empty = std::env::temp_dir().join(format!("factum-empty-{}.crt", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let m = refusal(&format!(
            "host=h sslmode=verify-ca sslrootcert={}",
            empty.display()
        ));
        let _ = std::fs::remove_file(&empty);
        assert!(m.contains("no PEM certificate"), "{m}");
        // Options tokio-postgres does not know are still refused by it.
        assert!(refusal("host=h sslcert=/x.crt").contains("sslcert"));
    }

    #[test]
    fn verify_modes_without_a_root_file_are_refused() {
        if default_root_file().is_some() {
            return; // libpq's default root file exists here: it would be used
        }
        for mode in ["verify-ca", "verify-full"] {
            let m = refusal(&format!("postgres://h/db?sslmode={mode}"));
            assert!(m.contains("needs sslrootcert"), "{m}");
        }
    }
}
