//! `factum backup` and `factum restore` (ADR 32), to and from a directory
//! or object storage (ADR 40's leftover, on the archive tier's S3 client).

use std::path::{Path, PathBuf};
use std::time::Instant;

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
        uploaded.0,
        uploaded.1,
        target.describe()
    );
    Ok(())
}

/// The manifest of a backup in object storage: the engine's manifest and
/// the object holding each of its files.
#[derive(serde::Serialize, serde::Deserialize)]
struct RemoteManifest {
    manifest: factum_engine::Manifest,
    objects: std::collections::BTreeMap<String, String>,
}

/// The manifest's object name in a backup prefix.
const REMOTE_MANIFEST: &str = "BACKUP.json";

/// Uploads the staged backup in `staging`; files and bytes uploaded.
fn upload(target: &dyn Archive, staging: &Path) -> Result<(usize, u64), CliError> {
    let manifest = factum_engine::backup::read_manifest(staging)?;
    let mut objects = std::collections::BTreeMap::new();
    let (mut files, mut bytes) = (0, 0);
    for f in manifest.segments.iter().chain(manifest.index.iter()) {
        let sha = f.sha256.as_deref().ok_or_else(|| {
            CliError::failure(format!("{}: the staged manifest has no checksum", f.name))
        })?;
        let object = format!("{}.{}", f.name, &sha[..sha.len().min(16)]);
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
    let path = staging.join("BACKUP.remote.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&remote).expect("serializable"),
    )
    .map_err(|e| CliError::failure(format!("writing {}: {e}", path.display())))?;
    target.put(REMOTE_MANIFEST, &path)?;
    Ok((files, bytes))
}

/// Downloads the backup in `source` into `dir` as a backup directory.
fn download(source: &dyn Archive, dir: &Path) -> Result<(), CliError> {
    // Objects are fetched 8 MiB at a time into files.
    let fetch = |object: &str, to: &Path| -> Result<(), CliError> {
        let size = source.size(object)?.ok_or_else(|| {
            CliError::failure(format!(
                "{}: no {object}: not a backup, or an incomplete one",
                source.describe()
            ))
        })?;
        let mut file = std::fs::File::create(to)
            .map_err(|e| CliError::failure(format!("creating {}: {e}", to.display())))?;
        let mut at = 0u64;
        while at < size {
            let chunk = source.get_range(object, at, 8 << 20)?;
            if chunk.is_empty() {
                return Err(CliError::failure(format!(
                    "{}: {object} ends at {at} of {size} bytes",
                    source.describe()
                )));
            }
            std::io::Write::write_all(&mut file, &chunk)
                .map_err(|e| CliError::failure(format!("writing {}: {e}", to.display())))?;
            at += chunk.len() as u64;
        }
        Ok(())
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
