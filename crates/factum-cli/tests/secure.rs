//! `factum serve` is secure unless told otherwise (ADR 30): `factum certs`
//! makes a CA and a node certificate the server serves with, `--dev` makes
//! and keeps its own, and contradicting flags are refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

fn factum() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_factum"));
    c.env_remove("FACTUM_DATA").env_remove("FACTUM_LOG");
    c
}

/// Starts `factum serve ARGS` and reads its stdout up to the "serving"
/// line: (the child, the lines printed, the port).
fn serve(args: &[&str]) -> (Child, Vec<String>, u16) {
    let mut child = factum()
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "exited early: {lines:?}"
        );
        let serving = line.contains("serving");
        lines.push(line.trim_end().to_owned());
        if serving {
            break;
        }
    }
    let last = lines.last().unwrap();
    let port = last
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {last:?}"));
    (child, lines, port)
}

/// `GET /health` over TLS, trusting `ca`: the status line.
fn health(port: u16, ca: &Path) -> std::io::Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await?;
        let mut raw = Vec::new();
        tls.read_to_end(&mut raw).await?;
        Ok(String::from_utf8_lossy(&raw)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned())
    })
}

fn stop(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn dev_mode_makes_its_certificates_once_and_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let (child, lines, port) = serve(&["--data", data, "--dev"]);
    let ca = dir.path().join("store/dev-certs/ca.crt");
    let text = lines.join("\n");
    assert!(
        text.contains(&format!("development CA: {}", ca.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("tls=true&tlsCaFile={}", ca.display())),
        "a connection string: {text}"
    );
    assert!(text.contains("(gRPC and HTTP; TLS, users)"), "{text}");
    assert_eq!(health(port, &ca).unwrap(), "HTTP/1.1 200 OK");
    stop(child);
    let first = std::fs::read(&ca).unwrap();
    let (child, _, port) = serve(&["--data", data, "--dev"]);
    assert_eq!(std::fs::read(&ca).unwrap(), first, "the CA is kept");
    assert_eq!(health(port, &ca).unwrap(), "HTTP/1.1 200 OK");
    stop(child);
}

#[test]
fn certs_made_by_factum_certs_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |args: &[&str]| {
        let o = factum().current_dir(d).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    ok(&["certs", "create-ca"]);
    let out = ok(&[
        "certs",
        "create-node",
        "--ip",
        "127.0.0.1",
        "--dns",
        "localhost",
    ]);
    assert!(
        out.contains("factum serve --tls-cert node/node.crt --tls-key node/node.key"),
        "{out}"
    );
    let o = factum()
        .current_dir(d)
        .args(["certs", "create-ca"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "an existing CA is not overwritten"
    );
    let o = factum()
        .current_dir(d)
        .args(["certs", "create-node", "--out", "n2"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "a node certificate names its addresses"
    );

    let cert = d.join("node/node.crt");
    let key = d.join("node/node.key");
    let data = d.join("store");
    let (child, _, port) = serve(&[
        "--data",
        data.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(
        health(port, &d.join("ca/ca.crt")).unwrap(),
        "HTTP/1.1 200 OK"
    );
    stop(child);
}

#[test]
fn contradicting_or_incomplete_security_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("store");
    let data = data.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--insecure", "--dev"], "--insecure serves without TLS"),
        (&["--tls-cert", "x.crt"], "--tls-cert needs --tls-key"),
        (
            &["--dev", "--tls-key", "x.key"],
            "--dev makes its own certificates",
        ),
        (
            &[
                "--tls-cert",
                "/nonexistent.crt",
                "--tls-key",
                "/nonexistent.key",
            ],
            "cannot read /nonexistent.crt",
        ),
        // Bearer tokens (ADR 34): only when secure, with issuer and audience.
        (
            &[
                "--insecure",
                "--jwks-file",
                "k.json",
                "--jwt-issuer",
                "i",
                "--jwt-audience",
                "a",
            ],
            "--insecure accepts any or no credentials",
        ),
        (
            &["--dev", "--jwks-file", "k.json", "--jwt-issuer", "i"],
            "--jwks-file needs --jwt-issuer and --jwt-audience",
        ),
        (&["--dev", "--jwt-audience", "a"], "need --jwks-file"),
        (
            &[
                "--dev",
                "--jwks-file",
                "/nonexistent.json",
                "--jwt-issuer",
                "i",
                "--jwt-audience",
                "a",
            ],
            "cannot read the JWKS file /nonexistent.json",
        ),
    ];
    for (args, message) in cases {
        let o = factum()
            .args(["serve", "--data", data, "--listen", "127.0.0.1:0"])
            .args(*args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}
