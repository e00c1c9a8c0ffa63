//! `factum backup` and `factum restore` (ADR 32), to and from a directory
//! or object storage (ADR 40's leftover, on the archive tier's S3 client).
//!
//! To object storage, a backup is staged in a local directory, each file
//! goes up as a content-addressed object (`<name>.<16 hex of its
//! SHA-256>`, skipped when there) and `BACKUP.json` last, so a backup cut
//! short leaves the previous manifest naming complete objects. Then the
//! objects that neither the new manifest nor the one it replaced names,
//! and that are older than a grace period, are deleted, unless
//! `BACKUP.json` is no longer the one this backup put (another backup ran
//! meanwhile: then nothing is). Keeping the previous manifest's objects
//! lets a restore that started from it finish; the grace period spares the
//! objects of a backup still uploading. One backup per prefix at a time is
//! what is supported (ADR 40's addendum says what a concurrent one can
//! still do).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use factum_engine::{Archive, BackupReport};

use super::{ensure_store, open};
use crate::error::CliError;

/// Arguments of `factum backup`.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The store's directory (not held by a running server: back a served
    /// store up with `POST /admin/backup` on the server instead).
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// Where the backup goes: an empty directory, or one holding an earlier
    /// backup of this store (then only new data is copied); or object
    /// storage, `s3://bucket/prefix` (files already there are not uploaded
    /// again).
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub to: String,
    /// For a backup to object storage: the local directory it is staged in
    /// first (kept, so the next backup copies only new data) [default: a
    /// temporary directory, removed afterwards].
    #[arg(long, value_name = "DIR")]
    pub staging: Option<PathBuf>,
    /// For a backup to object storage: once the new `BACKUP.json` is in
    /// place, delete the objects in the prefix that neither it nor the
    /// manifest it replaced names and that are at least this old (`0s`: at
    /// once; `30m`, `12h`, `7d`). The age spares the objects of another
    /// backup still uploading; the replaced manifest's objects stay for a
    /// restore that started from it. One backup per prefix at a time is
    /// supported: a backup that finds another one's `BACKUP.json` in place
    /// of its own deletes nothing, but two running at once can still
    /// delete an object the other one counts on.
    #[arg(long, default_value = "1h", value_name = "AGE")]
    pub delete_unreferenced_after: String,
    /// For a backup to object storage: delete no object (leave those no
    /// manifest names to a bucket lifecycle rule).
    #[arg(long, conflicts_with = "delete_unreferenced_after")]
    pub keep_unreferenced: bool,
    #[command(flatten)]
    pub s3: super::archive::S3Options,
}

/// Arguments of `factum restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup: its directory, or `s3://bucket/prefix` of a backup to
    /// object storage.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub from: String,
    #[command(flatten)]
    pub s3: super::archive::S3Options,
    /// Where the store is made: a missing or empty directory.
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: PathBuf,
    /// Replace the store in a non-empty `--data` directory.
    #[arg(long)]
    pub force: bool,
}

/// Runs `factum backup`.
pub fn backup(args: BackupArgs) -> Result<(), CliError> {
    ensure_store(&args.data)?;
    let grace = if args.keep_unreferenced {
        None
    } else {
        Some(super::archive::age(
            "--delete-unreferenced-after",
            &args.delete_unreferenced_after,
        )?)
    };
    let started = Instant::now();
    let engine = match open(&args.data, super::engine_config(None)?) {
        Ok(e) => e,
        Err(e) if e.message.contains("locked") => {
            return Err(CliError::failure(format!(
                "{}; while a server holds the store, ask it (it writes under its --backup-root): curl -X POST http://HOST:2113/admin/backup -d '{{\"to\": \"NAME\"}}'",
                e.message
            )))
        }
        Err(e) => return Err(e),
    };
    if !args.to.starts_with("s3://") {
        let report = engine.backup(Path::new(&args.to));
        engine.close()?;
        print(&report?, started, "backed up");
        return Ok(());
    }
    // Object storage: staged locally (incremental there), then every file
    // the staged manifest names is uploaded under a name that carries its
    // SHA-256 (skipped when already there), and the manifest last.
    let target = args.s3.open(&args.to)?;
    let temp = match &args.staging {
        Some(_) => None,
        None => Some(
            tempfile::tempdir()
                .map_err(|e| CliError::failure(format!("cannot make a staging directory: {e}")))?,
        ),
    };
    let staging = args
        .staging
        .clone()
        .unwrap_or_else(|| temp.as_ref().expect("made above").path().to_path_buf());
    let report = engine.backup(&staging);
    engine.close()?;
    let report = report?;
    let uploaded = upload(target.as_ref(), &staging)?;
    print(&report, started, "staged");
    println!(
        "uploaded       {} file(s), {} byte(s) to {} (the others were there)",
        uploaded.files,
        uploaded.bytes,
        target.describe()
    );
    let Some(grace) = grace else {
        println!("deleted        nothing (--keep-unreferenced)");
        return Ok(());
    };
    let cleanup = delete_unreferenced(target.as_ref(), &uploaded, grace, SystemTime::now())
        .map_err(|e| {
            e.context(format!(
                "the backup is in place in {}, but deleting the objects no manifest names failed",
                target.describe()
            ))
        })?;
    println!("deleted        {cleanup}");
    Ok(())
}

/// The manifest of a backup in object storage: the engine's manifest and
/// the object holding each of its files.
#[derive(serde::Serialize, serde::Deserialize)]
struct RemoteManifest {
    manifest: factum_engine::Manifest,
    objects: BTreeMap<String, String>,
}

/// What the clean-up reads of a manifest: the objects it names (so a
/// manifest whose engine part this version cannot read still protects its
/// objects).
#[derive(serde::Deserialize)]
struct NamedObjects {
    objects: BTreeMap<String, String>,
}

/// The manifest's object name in a backup prefix.
const REMOTE_MANIFEST: &str = "BACKUP.json";

/// The hex digits of a file's SHA-256 its object's name carries.
const OBJECT_HASH_DIGITS: usize = 16;

/// The object holding a staged file: `<name>.<16 hex of its SHA-256>`.
fn object_name(file: &str, sha256: &str) -> String {
    format!("{file}.{}", &sha256[..sha256.len().min(OBJECT_HASH_DIGITS)])
}

/// Whether `name` is in [`object_name`]'s form. The clean-up deletes only
/// such objects: whatever else is in the prefix (an archive tier's
/// `<segment>.<8 hex>` objects, should the same prefix be given to both)
/// is not the backup's.
fn is_backup_object(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(file, hash)| {
        !file.is_empty()
            && hash.len() == OBJECT_HASH_DIGITS
            && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// What [`upload`] did.
struct Uploaded {
    /// Files uploaded (the others were there) …
    files: usize,
    /// … and their bytes.
    bytes: u64,
    /// The objects the new manifest names.
    objects: BTreeSet<String>,
    /// The `BACKUP.json` this backup put, byte for byte.
    manifest: Vec<u8>,
    /// The `BACKUP.json` it replaced (`None`: there was none).
    previous: Option<Vec<u8>>,
}

/// Uploads the staged backup in `staging`: the files first, then the
/// manifest, reading the manifest it replaces just before.
fn upload(target: &dyn Archive, staging: &Path) -> Result<Uploaded, CliError> {
    let manifest = factum_engine::backup::read_manifest(staging)?;
    let mut objects = BTreeMap::new();
    let (mut files, mut bytes) = (0, 0);
    for f in manifest.segments.iter().chain(manifest.index.iter()) {
        let sha = f.sha256.as_deref().ok_or_else(|| {
            CliError::failure(format!("{}: the staged manifest has no checksum", f.name))
        })?;
        let object = object_name(&f.name, sha);
        if target.size(&object)? != Some(f.bytes) {
            target.put(&object, &staging.join(&f.name))?;
            if target.size(&object)? != Some(f.bytes) {
                return Err(CliError::failure(format!(
                    "{object}: the uploaded object does not have the staged file's {} bytes",
                    f.bytes
                )));
            }
            files += 1;
            bytes += f.bytes;
        }
        objects.insert(f.name.clone(), object);
    }
    let remote = RemoteManifest { manifest, objects };
    let body = serde_json::to_vec_pretty(&remote).expect("serializable");
    let path = staging.join("BACKUP.remote.json");
    std::fs::write(&path, &body)
        .map_err(|e| CliError::failure(format!("writing {}: {e}", path.display())))?;
    // Read as late as possible: what it names stays for a restore that
    // started from it.
    let previous = read_object(target, REMOTE_MANIFEST)?;
    target.put(REMOTE_MANIFEST, &path)?;
    Ok(Uploaded {
        files,
        bytes,
        objects: remote.objects.into_values().collect(),
        manifest: body,
        previous,
    })
}

/// What the clean-up after a backup to object storage did.
#[derive(Debug, PartialEq, Eq)]
enum Cleanup {
    /// It deleted `objects` objects of `bytes` bytes, and kept the
    /// unreferenced ones younger than the grace period (`young`) or without
    /// a modification time (`undated`).
    Deleted {
        objects: usize,
        bytes: u64,
        young: usize,
        undated: usize,
    },
    /// It deleted nothing, for this reason.
    Skipped(String),
}

impl std::fmt::Display for Cleanup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cleanup::Deleted {
                objects,
                bytes,
                young,
                undated,
            } => {
                write!(f, "{objects} object(s), {bytes} byte(s) no manifest names")?;
                if *young > 0 {
                    write!(f, " ({young} kept: younger than the grace period)")?;
                }
                if *undated > 0 {
                    write!(f, " ({undated} kept: the store gives no modification time)")?;
                }
                Ok(())
            }
            Cleanup::Skipped(why) => write!(f, "nothing: {why}"),
        }
    }
}

/// Deletes the objects of the backup prefix that neither the manifest this
/// backup put nor the one it replaced names, once at least `grace` old
/// (judged at `now`). Never `BACKUP.json`, nor objects not in
/// [`object_name`]'s form, nor those without a modification time. Nothing
/// when the replaced manifest cannot be read (what it names is unknown) or
/// when `BACKUP.json` is no longer the manifest this backup put (another
/// backup ran meanwhile: its objects are not in the set kept here).
fn delete_unreferenced(
    target: &dyn Archive,
    uploaded: &Uploaded,
    grace: Duration,
    now: SystemTime,
) -> Result<Cleanup, CliError> {
    let mut named = uploaded.objects.clone();
    if let Some(previous) = &uploaded.previous {
        match serde_json::from_slice::<NamedObjects>(previous) {
            Ok(previous) => named.extend(previous.objects.into_values()),
            Err(e) => {
                return Ok(Cleanup::Skipped(format!(
                    "the {REMOTE_MANIFEST} this backup replaced names no objects this version reads ({e})"
                )))
            }
        }
    }
    let mut doomed = Vec::new();
    let (mut young, mut undated) = (0, 0);
    for object in target.list()? {
        if object.name == REMOTE_MANIFEST
            || !is_backup_object(&object.name)
            || named.contains(&object.name)
        {
            continue;
        }
        match object.modified {
            None => undated += 1,
            // A time ahead of ours (another clock) is age zero.
            Some(modified) if now.duration_since(modified).unwrap_or_default() < grace => {
                young += 1
            }
            Some(_) => doomed.push(object),
        }
    }
    if !doomed.is_empty()
        && read_object(target, REMOTE_MANIFEST)?.as_deref() != Some(&uploaded.manifest[..])
    {
        return Ok(Cleanup::Skipped(format!(
            "{REMOTE_MANIFEST} is no longer the manifest this backup put: another backup to this prefix ran meanwhile (one at a time is supported)"
        )));
    }
    for object in &doomed {
        target.delete(&object.name)?;
    }
    Ok(Cleanup::Deleted {
        objects: doomed.len(),
        bytes: doomed.iter().map(|object| object.size).sum(),
        young,
        undated,
    })
}

/// Copies `object` into `out`, 8 MiB at a time; `false` when there is no
/// object of that name.
fn fetch_into(
    source: &dyn Archive,
    object: &str,
    out: &mut dyn std::io::Write,
    to: &str,
) -> Result<bool, CliError> {
    let Some(size) = source.size(object)? else {
        return Ok(false);
    };
    let mut at = 0u64;
    while at < size {
        let chunk = source.get_range(object, at, 8 << 20)?;
        if chunk.is_empty() {
            return Err(CliError::failure(format!(
                "{}: {object} ends at {at} of {size} bytes",
                source.describe()
            )));
        }
        out.write_all(&chunk)
            .map_err(|e| CliError::failure(format!("writing {to}: {e}")))?;
        at += chunk.len() as u64;
    }
    Ok(true)
}

/// The whole of a small object (a manifest), or `None` when there is none.
fn read_object(source: &dyn Archive, object: &str) -> Result<Option<Vec<u8>>, CliError> {
    let mut bytes = Vec::new();
    Ok(fetch_into(source, object, &mut bytes, object)?.then_some(bytes))
}

/// Downloads the backup in `source` into `dir` as a backup directory.
fn download(source: &dyn Archive, dir: &Path) -> Result<(), CliError> {
    let fetch = |object: &str, to: &Path| -> Result<(), CliError> {
        let mut file = std::fs::File::create(to)
            .map_err(|e| CliError::failure(format!("creating {}: {e}", to.display())))?;
        match fetch_into(source, object, &mut file, &to.display().to_string())? {
            true => Ok(()),
            false => Err(CliError::failure(format!(
                "{}: no {object}: not a backup, or an incomplete one",
                source.describe()
            ))),
        }
    };
    let manifest_path = dir.join("BACKUP.remote.json");
    fetch(REMOTE_MANIFEST, &manifest_path)?;
    let bytes = std::fs::read(&manifest_path)
        .map_err(|e| CliError::failure(format!("reading {}: {e}", manifest_path.display())))?;
    let remote: RemoteManifest = serde_json::from_slice(&bytes).map_err(|e| {
        CliError::failure(format!("{}: not a backup manifest: {e}", source.describe()))
    })?;
    for (name, object) in &remote.objects {
        // Checked against the manifest's SHA-256 by the restore.
        fetch(object, &dir.join(name))?;
    }
    std::fs::write(
        dir.join(factum_engine::backup::MANIFEST),
        serde_json::to_vec_pretty(&remote.manifest).expect("serializable"),
    )
    .map_err(|e| CliError::failure(format!("writing the manifest: {e}")))?;
    Ok(())
}

/// Runs `factum restore`, then checks the store it made.
pub fn restore(args: RestoreArgs) -> Result<(), CliError> {
    let started = Instant::now();
    let temp;
    let from = if args.from.starts_with("s3://") {
        let source = args.s3.open(&args.from)?;
        temp = tempfile::tempdir()
            .map_err(|e| CliError::failure(format!("cannot make a download directory: {e}")))?;
        download(source.as_ref(), temp.path())?;
        temp.path().to_path_buf()
    } else {
        PathBuf::from(&args.from)
    };
    let report = factum_engine::restore(&from, &args.data, args.force)?;
    print(&report, started, "restored");
    // A store encrypted at rest (ADR 45) is checked with its key.
    let key = super::at_rest_key(None, Some(true))?;
    let check = factum_engine::verify_store(&args.data, None, key.as_ref())?;
    if !check.ok() {
        return Err(CliError::failure(format!(
            "the restored store at {} fails verify: {} fault(s), the first: {}",
            args.data.display(),
            check.faults.len(),
            check.faults[0]
        )));
    }
    println!("verify: ok ({} events)", check.events);
    Ok(())
}

fn print(r: &BackupReport, started: Instant, what: &str) {
    println!("position       {}", r.position.0);
    println!("files          {} ({} copied)", r.files, r.files_copied);
    println!(
        "bytes          {} ({} copied)",
        r.bytes_total, r.bytes_copied
    );
    if r.files_checked > 0 {
        println!(
            "checked        {} segment(s) of the same length by checksum",
            r.files_checked
        );
    }
    if r.index_bytes > 0 {
        println!("index          {} bytes (snapshot)", r.index_bytes);
    } else {
        println!("index          none (rebuilt from the log at the first open)");
    }
    println!("{what} in {:.2} s", started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use factum_engine::LocalArchive;

    /// An archive in a temporary directory holding `objects` (name, bytes).
    fn archive_with(objects: &[(&str, &[u8])]) -> (tempfile::TempDir, LocalArchive) {
        let dir = tempfile::tempdir().unwrap();
        let archive = LocalArchive::new(dir.path().join("prefix")).unwrap();
        for (name, bytes) in objects {
            let source = dir.path().join("source");
            std::fs::write(&source, bytes).unwrap();
            archive.put(name, &source).unwrap();
        }
        (dir, archive)
    }

    fn names(archive: &LocalArchive) -> Vec<String> {
        archive
            .list()
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect()
    }

    const NEW: &str = "00000000000000000000.seg.0123456789abcdef";
    const PREVIOUS: &str = "00000000000000000000.seg.fedcba9876543210";
    const OLDER: &str = "00000000000000000000.seg.00112233445566ff";
    const ARCHIVE_TIER: &str = "00000000000000000000.seg.1a2b3c4d";
    const FOREIGN: &str = "README.txt";

    /// What a backup that put `NEW` (with `PREVIOUS` named by the manifest
    /// it replaced) hands the clean-up.
    fn uploaded(manifest: &[u8]) -> Uploaded {
        Uploaded {
            files: 1,
            bytes: 3,
            objects: [NEW.to_string()].into(),
            manifest: manifest.to_vec(),
            previous: Some(
                format!(r#"{{"manifest": {{"version": 99}}, "objects": {{"00000000000000000000.seg": "{PREVIOUS}"}}}}"#)
                    .into_bytes(),
            ),
        }
    }

    #[test]
    fn object_names_carry_sixteen_hex_digits() {
        let name = object_name("index.snapshot.redb", &"ab".repeat(32));
        assert_eq!(name, "index.snapshot.redb.abababababababab");
        assert!(is_backup_object(&name));
        for other in [
            REMOTE_MANIFEST,
            ARCHIVE_TIER,
            FOREIGN,
            ".0123456789abcdef",
            "x.0123456789ABCDEF",
        ] {
            assert!(!is_backup_object(other), "{other}");
        }
    }

    #[test]
    fn deletes_only_old_objects_neither_manifest_names() {
        let ours = br#"{"objects": {"00000000000000000000.seg": "00000000000000000000.seg.0123456789abcdef"}}"#;
        let (_dir, archive) = archive_with(&[
            (NEW, b"new"),
            (PREVIOUS, b"previous"),
            (OLDER, b"older!"),
            (ARCHIVE_TIER, b"archived"),
            (FOREIGN, b"not ours"),
            (REMOTE_MANIFEST, ours),
        ]);
        let uploaded = uploaded(ours);
        let now = SystemTime::now() + Duration::from_secs(5);
        // Younger than the grace period: kept.
        let kept =
            delete_unreferenced(&archive, &uploaded, Duration::from_secs(3600), now).unwrap();
        assert_eq!(
            kept,
            Cleanup::Deleted {
                objects: 0,
                bytes: 0,
                young: 1,
                undated: 0
            }
        );
        assert!(names(&archive).contains(&OLDER.to_string()));
        // Old enough: only the object neither manifest names goes.
        let done = delete_unreferenced(&archive, &uploaded, Duration::ZERO, now).unwrap();
        assert_eq!(
            done,
            Cleanup::Deleted {
                objects: 1,
                bytes: 6,
                young: 0,
                undated: 0
            }
        );
        assert_eq!(
            names(&archive),
            [NEW, ARCHIVE_TIER, PREVIOUS, REMOTE_MANIFEST, FOREIGN]
        );
        assert_eq!(done.to_string(), "1 object(s), 6 byte(s) no manifest names");
    }

    #[test]
    fn another_backups_manifest_stops_the_deletion() {
        let ours = br#"{"objects": {}}"#;
        let theirs = br#"{"objects": {"00000000000000000000.seg": "00000000000000000000.seg.00112233445566ff"}}"#;
        let (_dir, archive) =
            archive_with(&[(NEW, b"new"), (OLDER, b"older!"), (REMOTE_MANIFEST, theirs)]);
        let now = SystemTime::now() + Duration::from_secs(5);
        let cleanup = delete_unreferenced(&archive, &uploaded(ours), Duration::ZERO, now).unwrap();
        assert!(
            matches!(&cleanup, Cleanup::Skipped(why) if why.contains("another backup")),
            "{cleanup:?}"
        );
        assert!(names(&archive).contains(&OLDER.to_string()));
    }

    #[test]
    fn an_unreadable_previous_manifest_stops_the_deletion() {
        let ours = br#"{"objects": {}}"#;
        let (_dir, archive) = archive_with(&[(OLDER, b"older!"), (REMOTE_MANIFEST, ours)]);
        let mut uploaded = uploaded(ours);
        uploaded.previous = Some(b"{not json".to_vec());
        let now = SystemTime::now() + Duration::from_secs(5);
        let cleanup = delete_unreferenced(&archive, &uploaded, Duration::ZERO, now).unwrap();
        assert!(matches!(cleanup, Cleanup::Skipped(_)), "{cleanup:?}");
        assert!(names(&archive).contains(&OLDER.to_string()));
    }
}
