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
        .env_remove("FACTUM_DATA")
        // Crypto-shredding alone: segments in the clear, so the search of
        // every file for the personal value proves the fields' encryption
        // (at rest, ADR 45, is tested in tests/encryption.rs).
        .env("FACTUM_ENCRYPT_AT_REST", "off");
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

/// `factum rekey` (ADR 42): the subject keys move to a new master key;
/// events read back with the new key, the old one is refused, a second
/// rekey has nothing to do, wrong keys change nothing, and `serve` with the
/// old key is refused.
#[test]
fn rekey_moves_the_subject_keys_to_a_new_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let old = dir.path().join("old.key");
    let new = dir.path().join("new.key");
    let stranger = dir.path().join("stranger.key");
    std::fs::write(&old, "4d".repeat(32)).unwrap();
    std::fs::write(&new, "e1".repeat(32)).unwrap();
    std::fs::write(&stranger, "07".repeat(32)).unwrap();
    let meta = r#"{"$subject":"customer-hal","$personalFields":["email"]}"#;
    let body = format!(r#"{{"email":"{SECRET}","plan":"tin"}}"#);
    let mut c = factum(Some(&old));
    c.arg("append").arg("--data").arg(&data).args([
        "customer-hal",
        "Registered",
        &body,
        "--metadata",
        meta,
    ]);
    assert!(run(c).status.success());
    let read = |key: &Path| {
        let mut c = factum(Some(key));
        c.arg("read")
            .arg("--data")
            .arg(&data)
            .args(["customer-hal", "--json"]);
        run(c)
    };
    let rekey = |from: &Path, to: Option<&Path>| {
        let mut c = factum(Some(from));
        c.arg("rekey").arg("--data").arg(&data);
        if let Some(to) = to {
            c.arg("--new-encryption-key-file").arg(to);
        }
        run(c)
    };
    let keys_before = std::fs::read(data.join("subject-keys")).unwrap();

    // Refusals first: nothing changes.
    let o = rekey(&old, None);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs the new master key"));
    let o = rekey(&old, Some(&old));
    assert_eq!(o.status.code(), Some(2));
    let o = rekey(&stranger, Some(&dir.path().join("missing.key")));
    assert_eq!(o.status.code(), Some(2));
    let o = rekey(&stranger, Some(&stranger.with_extension("x")));
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(stranger.with_extension("y"), "99".repeat(32)).unwrap();
    let o = rekey(&stranger, Some(&stranger.with_extension("y")));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("neither the old nor the new"));
    assert_eq!(
        std::fs::read(data.join("subject-keys")).unwrap(),
        keys_before
    );

    let o = rekey(&old, Some(&new));
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("re-sealed the keys of 1 subject"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&read(&new)).contains(SECRET));
    let o = read(&old);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not open under this master key"));
    let o = rekey(&old, Some(&new));
    assert!(o.status.success());
    assert!(
        stdout(&o).contains("already under the new master key"),
        "{}",
        stdout(&o)
    );

    let mut serve = factum(Some(&old));
    serve
        .arg("serve")
        .arg("--data")
        .arg(&data)
        .args(["--insecure", "--listen", "127.0.0.1:0"]);
    let o = run(serve);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not open under this master key"));
}
