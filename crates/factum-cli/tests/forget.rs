//! `factum forget` and the CLI's crypto-shredding flags (ADR 36), on the
//! built binary: an event naming a subject is written encrypted (never
//! in plaintext on disk), read back decrypted with the key and as stored
//! without it; `forget` destroys the key and records the audit event;
//! without the key `append` of a subject event and `serve` are refused.

use std::path::Path;
use std::process::{Command, Output};

fn factum(key: Option<&Path>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_factum"));
    c.env_remove("FACTUM_ENCRYPTION_KEY_FILE")
        .env_remove("FACTUM_ENCRYPTION_KEY")
        .env_remove("FACTUM_DATA");
    if let Some(key) = key {
        c.env("FACTUM_ENCRYPTION_KEY_FILE", key);
    }
    c
}

fn run(mut c: Command) -> Output {
    let o = c.output().unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const SECRET: &str = "gwen-cli-4b7e@example.org";

#[test]
fn forget_offline_destroys_the_key_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("master.key");
    std::fs::write(&key, format!("{}\n", "3c".repeat(32))).unwrap();
    let meta = r#"{"$subject":"customer-gwen","$personalFields":["email"]}"#;
    let body = format!(r#"{{"email":"{SECRET}","plan":"gold"}}"#);
    let append = |key: Option<&Path>| {
        let mut c = factum(key);
        c.arg("append").arg("--data").arg(&data).args([
            "customer-gwen",
            "Registered",
            &body,
            "--metadata",
            meta,
        ]);
        run(c)
    };
    // Without the master key a subject's event is refused, unwritten.
    let refused = append(None);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--encryption-key-file"));
    assert!(append(Some(&key)).status.success());

    let read = |key: Option<&Path>| {
        let mut c = factum(key);
        c.arg("read")
            .arg("--data")
            .arg(&data)
            .args(["customer-gwen", "--json"]);
        run(c)
    };
    assert!(stdout(&read(Some(&key))).contains(SECRET));
    let stored = stdout(&read(None));
    assert!(
        stored.contains("$encrypted") && !stored.contains(SECRET),
        "{stored}"
    );
    for f in std::fs::read_dir(&data).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    }

    // Serving the store without the key is refused.
    let mut serve = factum(None);
    serve
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--insecure", "--listen", "127.0.0.1:0"]);
    let o = run(serve);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds subject keys"));

    let mut forget = factum(Some(&key));
    forget
        .arg("forget")
        .arg("--data")
        .arg(&data)
        .arg("customer-gwen");
    let o = run(forget);
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("its key is destroyed"),
        "{}",
        stdout(&o)
    );
    let after = stdout(&read(Some(&key)));
    assert!(
        after.contains("\"$erased\":true") && !after.contains(SECRET),
        "{after}"
    );
    let mut audit = factum(None);
    audit
        .arg("read")
        .arg("--data")
        .arg(&data)
        .args(["$subjects-forgotten", "--json"]);
    let audit = stdout(&run(audit));
    assert!(
        audit.contains("customer-gwen") && audit.contains("factum forget (offline"),
        "{audit}"
    );

    // A wrong master key is a clear error.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "ab".repeat(32)).unwrap();
    let o = run({
        let mut c = factum(Some(&wrong));
        c.arg("forget")
            .arg("--data")
            .arg(&data)
            .arg("customer-gwen");
        c
    });
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not open under this master key"));
}
