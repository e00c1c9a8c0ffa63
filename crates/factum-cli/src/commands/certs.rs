//! `factum certs`: a CA and node certificates for a secure deployment, and
//! the certificates `factum serve --dev` makes on first start (ADR 30).
//!
//! Like KurrentDB's `es-gencert-cli`: `create-ca` writes `ca.crt` and
//! `ca.key`; `create-node` writes `node.crt` and `node.key`, signed by that
//! CA, for the names and addresses clients reach the node at. Keys are
//! ECDSA P-256 (what rcgen's ring backend makes; every client's TLS stack
//! accepts it), written with mode 0600. Files are never overwritten: an
//! existing certificate may be in use.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::error::CliError;

/// Arguments of `factum certs`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Makes a certificate authority: `ca.crt` and `ca.key` in --out.
    CreateCa(CreateCaArgs),
    /// Makes a node certificate signed by a CA: `node.crt` and `node.key` in --out.
    CreateNode(CreateNodeArgs),
}

/// Arguments of `factum certs create-ca`.
#[derive(Args, Debug)]
pub struct CreateCaArgs {
    /// Directory to write `ca.crt` and `ca.key` to (created when missing).
    #[arg(long, value_name = "DIR", default_value = "ca")]
    out: PathBuf,
    /// Days the CA is valid [default: 1825].
    #[arg(long, value_name = "DAYS", default_value_t = 1825)]
    days: u32,
    /// The CA's common name.
    #[arg(long, value_name = "NAME", default_value = "Factum CA")]
    name: String,
}

/// Arguments of `factum certs create-node`.
#[derive(Args, Debug)]
pub struct CreateNodeArgs {
    /// The CA's certificate.
    #[arg(long, value_name = "FILE", default_value = "ca/ca.crt")]
    ca_cert: PathBuf,
    /// The CA's private key.
    #[arg(long, value_name = "FILE", default_value = "ca/ca.key")]
    ca_key: PathBuf,
    /// Directory to write `node.crt` and `node.key` to (created when missing).
    #[arg(long, value_name = "DIR", default_value = "node")]
    out: PathBuf,
    /// IP addresses clients reach the node at (repeat or comma-separate).
    #[arg(long = "ip", value_name = "ADDR", value_delimiter = ',')]
    ips: Vec<IpAddr>,
    /// DNS names clients reach the node at (repeat or comma-separate).
    #[arg(long = "dns", value_name = "NAME", value_delimiter = ',')]
    dns: Vec<String>,
    /// Days the certificate is valid [default: 365].
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    days: u32,
}

/// Runs `factum certs …`.
pub fn run(args: CertsArgs) -> Result<(), CliError> {
    match args.command {
        CertsCommand::CreateCa(a) => {
            let (cert, key) = create_ca(&a.out, &a.name, a.days)?;
            println!("CA certificate: {}", cert.display());
            println!("CA private key: {} (keep it secret)", key.display());
            Ok(())
        }
        CertsCommand::CreateNode(a) => {
            if a.ips.is_empty() && a.dns.is_empty() {
                return Err(CliError::usage(
                    "give the addresses clients reach the node at: --ip ADDR and/or --dns NAME",
                ));
            }
            let (cert, key) = create_node(&a.ca_cert, &a.ca_key, &a.out, &a.ips, &a.dns, a.days)?;
            println!("node certificate: {}", cert.display());
            println!("node private key: {}", key.display());
            println!(
                "serve with: factum serve --tls-cert {} --tls-key {}",
                cert.display(),
                key.display()
            );
            Ok(())
        }
    }
}

fn cert_error(what: &str) -> impl Fn(rcgen::Error) -> CliError + '_ {
    move |e| CliError::failure(format!("{what}: {e}"))
}

/// A validity period starting a minute ago (clocks differ a little).
fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(i64::from(days.max(1)));
}

/// Writes `ca.crt` and `ca.key` in `dir`; their paths.
pub fn create_ca(dir: &Path, name: &str, days: u32) -> Result<(PathBuf, PathBuf), CliError> {
    let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    refuse_existing(&[&cert_path, &key_path])?;
    let key = KeyPair::generate().map_err(cert_error("cannot make a key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params
        .self_signed(&key)
        .map_err(cert_error("cannot make the CA certificate"))?;
    write_pair(
        dir,
        &cert_path,
        &cert.pem(),
        &key_path,
        &key.serialize_pem(),
    )?;
    Ok((cert_path, key_path))
}

/// Writes `node.crt` and `node.key` in `dir`, signed by the CA; their paths.
pub fn create_node(
    ca_cert: &Path,
    ca_key: &Path,
    dir: &Path,
    ips: &[IpAddr],
    dns: &[String],
    days: u32,
) -> Result<(PathBuf, PathBuf), CliError> {
    let (cert_path, key_path) = (dir.join("node.crt"), dir.join("node.key"));
    refuse_existing(&[&cert_path, &key_path])?;
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| CliError::failure(format!("cannot read {}: {e}", p.display())))
    };
    let issuer_key = KeyPair::from_pem(&read(ca_key)?)
        .map_err(|e| CliError::failure(format!("{}: not a private key: {e}", ca_key.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&read(ca_cert)?, issuer_key).map_err(|e| {
        CliError::failure(format!("{}: not a CA certificate: {e}", ca_cert.display()))
    })?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // KurrentDB names its node certificates `eventstoredb-node`.
    dn.push(DnType::CommonName, "factum-node");
    params.distinguished_name = dn;
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    for name in dns {
        let name = name
            .clone()
            .try_into()
            .map_err(|e| CliError::usage(format!("--dns {name:?}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Server and client: nodes of a cluster authenticate to each other.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(cert_error("cannot make a key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(cert_error("cannot sign the node certificate"))?;
    write_pair(
        dir,
        &cert_path,
        &cert.pem(),
        &key_path,
        &key.serialize_pem(),
    )?;
    Ok((cert_path, key_path))
}

/// The certificates of `factum serve --dev` in `<data>/dev-certs`: made on
/// first start (a CA and a node certificate for `localhost` and
/// `127.0.0.1`), kept and reused afterwards. Returns the CA, node
/// certificate and node key paths.
pub fn ensure_dev(data: &Path) -> Result<(PathBuf, PathBuf, PathBuf), CliError> {
    let dir = data.join("dev-certs");
    let ca = dir.join("ca.crt");
    let (cert, key) = (dir.join("node.crt"), dir.join("node.key"));
    if !ca.exists() {
        create_ca(&dir, "Factum development CA", 3650)?;
    }
    if !cert.exists() || !key.exists() {
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        create_node(
            &ca,
            &dir.join("ca.key"),
            &dir,
            &[
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
            ],
            &["localhost".to_owned()],
            3650,
        )?;
    }
    Ok((ca, cert, key))
}

fn refuse_existing(paths: &[&Path]) -> Result<(), CliError> {
    for p in paths {
        if p.exists() {
            return Err(CliError::usage(format!(
                "{} exists: not overwriting it (it may be in use)",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Writes the certificate (0644) and then the key (0600, created with that
/// mode so it is never readable by others, even briefly).
fn write_pair(
    dir: &Path,
    cert_path: &Path,
    cert: &str,
    key_path: &Path,
    key: &str,
) -> Result<(), CliError> {
    use std::io::Write;
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), CliError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = options
            .open(path)
            .map_err(|e| CliError::failure(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))
    };
    write(key_path, key, 0o600)?;
    write(cert_path, cert, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_chains_to_its_ca_and_files_are_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = create_ca(&dir.path().join("ca"), "Test CA", 10).unwrap();
        let (cert, key) = create_node(
            &ca,
            &ca_key,
            &dir.path().join("node"),
            &["127.0.0.1".parse().unwrap()],
            &["localhost".into()],
            10,
        )
        .unwrap();
        let files = factum_server::tls::TlsFiles {
            cert,
            key: key.clone(),
            client_ca: Some(ca.clone()),
        };
        files.load().expect("the node certificate and key load");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
        }
        let again = create_ca(&dir.path().join("ca"), "Test CA", 10).unwrap_err();
        assert!(
            again.message.contains("not overwriting"),
            "{}",
            again.message
        );
        let dev = ensure_dev(dir.path()).unwrap();
        assert_eq!(
            ensure_dev(dir.path()).unwrap(),
            dev,
            "dev certificates are kept"
        );
    }
}
