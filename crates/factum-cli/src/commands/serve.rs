//! `factum serve`: the KurrentDB-compatible gRPC + HTTP server on a store.
//!
//! Settings come from flags, then `FACTUM_…` environment variables, then an
//! optional config file (`--config`, `FACTUM_CONFIG`) of `name = value`
//! lines using the flags' names (`listen = "127.0.0.1:2113"`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use factum_engine::EngineConfig;

use super::{open, runtime};
use crate::error::CliError;

/// Arguments of `factum serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The store's directory (created when missing).
    #[arg(long, env = "FACTUM_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address to listen on, gRPC and HTTP alike [default: 127.0.0.1:2113].
    #[arg(long, env = "FACTUM_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Serve without TLS and accept any or no credentials (an explicit
    /// choice: without it the server is secure).
    #[arg(long, env = "FACTUM_INSECURE")]
    pub insecure: Option<Option<bool>>,
    /// Development mode: secure with a CA and a node certificate for
    /// localhost made on first start and kept in the data directory.
    #[arg(long, env = "FACTUM_DEV")]
    pub dev: Option<Option<bool>>,
    /// The node's certificate (PEM; a chain is allowed, the node's first).
    /// Reloaded when the file changes.
    #[arg(long, env = "FACTUM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The node certificate's private key (PEM).
    #[arg(long, env = "FACTUM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve `/metrics` without credentials on a secure node (for
    /// scrapers); otherwise it needs `$ops` or `$admins`.
    #[arg(long, env = "FACTUM_METRICS_ANONYMOUS")]
    pub metrics_anonymous: Option<Option<bool>>,
    /// CA certificates (PEM) whose client certificates are accepted.
    #[arg(long, env = "FACTUM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Accept bearer tokens (JWT) signed by a key of this JWKS file
    /// (`{"keys": [...]}`; reloaded when it changes). Needs --jwt-issuer
    /// and --jwt-audience.
    #[arg(long, env = "FACTUM_JWKS_FILE", value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` bearer tokens must carry.
    #[arg(long, env = "FACTUM_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` bearer tokens must carry (or include).
    #[arg(long, env = "FACTUM_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The token claim naming the user [default: sub].
    #[arg(long, env = "FACTUM_JWT_USER_CLAIM", value_name = "CLAIM")]
    pub jwt_user_claim: Option<String>,
    /// The token claims listing the user's groups, comma-separated (each a
    /// string or a list of strings) [default: groups,roles].
    #[arg(long, env = "FACTUM_JWT_GROUPS_CLAIM", value_name = "CLAIMS")]
    pub jwt_groups_claim: Option<String>,
    /// The address clients are told to connect to (Gossip) [default: the bound address].
    #[arg(long, env = "FACTUM_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<String>,
    /// The directory online backups (`POST /admin/backup`) may write under;
    /// without it the endpoint refuses, so no client can make the server
    /// write files elsewhere.
    #[arg(long, env = "FACTUM_BACKUP_ROOT", value_name = "DIR")]
    pub backup_root: Option<PathBuf>,
    /// Scavenge on a schedule: `daily@HH:MM` or `hourly@MM` (UTC) (ADR 33).
    #[arg(long, env = "FACTUM_SCAVENGE_SCHEDULE", value_name = "WHEN")]
    pub scavenge_schedule: Option<String>,
    /// Size at which the engine starts a new log segment, bytes
    /// [default: 268435456]; scavenges rewrite whole sealed segments.
    #[arg(long, env = "FACTUM_SEGMENT_BYTES", value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
    /// Compress sealed segments (zstd blocks, ADR 43): `off` [default],
    /// `sealed` (as soon as sealed), or an age such as `7d`, `12h`
    /// (sealed at least that long). Checked every minute; engine only.
    #[arg(long, env = "FACTUM_COMPRESS_SEGMENTS", value_name = "WHEN")]
    pub compress_segments: Option<String>,
    /// The archive sealed segments are copied to (ADR 43); checked every
    /// minute. Engine only.
    #[command(flatten)]
    pub archive: super::archive::ArchiveConn,
    /// Keep local copies of archived segments `forever` [default], or
    /// remove those sealed at least this long (`0s`, `7d`, `12h`); reads
    /// then fetch them from the archive into a 64 MiB cache.
    #[arg(long, env = "FACTUM_ARCHIVE_KEEP_LOCAL", value_name = "AGE")]
    pub archive_keep_local: Option<String>,
    /// The master key of crypto-shredding (ADR 36): a file of 64 hex
    /// digits (`openssl rand -hex 32`), or the key itself in
    /// FACTUM_ENCRYPTION_KEY. With it, events naming a `$subject` have
    /// their personal fields encrypted and `forget` works.
    /// With it the store is also encrypted at rest (ADR 45: every new
    /// segment under a data key this key wraps), unless
    /// --encrypt-at-rest off.
    #[arg(long, env = "FACTUM_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// `on` [default]: with a master key, segments are encrypted at rest
    /// (ADR 45); `off`: the key serves crypto-shredding alone and new
    /// segments are written in the clear (an encrypted store still needs
    /// its key to open). Engine only.
    #[arg(long, env = "FACTUM_ENCRYPT_AT_REST", value_name = "on|off")]
    pub encrypt_at_rest: Option<String>,
    /// Largest append in bytes (data + metadata) [default: 67108864].
    #[arg(long, env = "FACTUM_MAX_APPEND_BYTES", value_name = "BYTES")]
    pub max_append_bytes: Option<u64>,
    /// Append bytes held in memory at once across all clients; beyond it
    /// appends wait up to 5 s, then are refused unwritten (gRPC
    /// RESOURCE_EXHAUSTED, HTTP 503) [default: 268435456].
    #[arg(long, env = "FACTUM_MAX_INFLIGHT_APPEND_BYTES", value_name = "BYTES")]
    pub max_inflight_append_bytes: Option<u64>,
    /// Connections open at once; beyond it new ones wait to be accepted
    /// [default: 1000].
    #[arg(long, env = "FACTUM_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u64>,
    /// Concurrent calls per HTTP/2 connection [default: 100].
    #[arg(long, env = "FACTUM_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub max_concurrent_streams: Option<u64>,
    /// Seconds between HTTP/2 keep-alive pings [default: 10].
    #[arg(long, env = "FACTUM_KEEPALIVE_INTERVAL", value_name = "SECS")]
    pub keepalive_interval: Option<u64>,
    /// Seconds a keep-alive ping may go unanswered before the connection
    /// is dropped [default: 10].
    #[arg(long, env = "FACTUM_KEEPALIVE_TIMEOUT", value_name = "SECS")]
    pub keepalive_timeout: Option<u64>,
    /// Seconds an HTTP/1 request may take to send its headers [default: 30].
    #[arg(long, env = "FACTUM_HEADER_READ_TIMEOUT", value_name = "SECS")]
    pub header_read_timeout: Option<u64>,
    /// Seconds a connection with no request in flight stays open [default: 300].
    #[arg(long, env = "FACTUM_IDLE_TIMEOUT", value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Seconds to wait for in-flight requests at shutdown [default: 30].
    #[arg(long, env = "FACTUM_SHUTDOWN_GRACE", value_name = "SECS")]
    pub shutdown_grace: Option<u64>,
    /// A config file of `name = value` lines with the flags' names.
    #[arg(long, env = "FACTUM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where events live: `engine` (the embedded engine in --data) or
    /// `postgres` (a shared PostgreSQL database; servers are stateless)
    /// [default: engine].
    #[arg(long, env = "FACTUM_BACKEND", value_name = "BACKEND")]
    pub backend: Option<String>,
    /// PostgreSQL connection string (libpq's URL or key=value form; `sslmode`
    /// and `sslrootcert` as in libpq), with `--backend postgres`.
    #[arg(long, env = "FACTUM_POSTGRES_URL", value_name = "URL")]
    pub postgres_url: Option<String>,
    /// PostgreSQL schema of the store, with `--backend postgres` [default: factum].
    #[arg(long, env = "FACTUM_POSTGRES_SCHEMA", value_name = "NAME")]
    pub postgres_schema: Option<String>,
    /// Start on a PostgreSQL server whose settings can lose acknowledged
    /// events (`fsync` or `full_page_writes` off): for throwaway
    /// development clusters only; refused otherwise.
    #[arg(long, env = "FACTUM_POSTGRES_ALLOW_UNSAFE")]
    pub postgres_allow_unsafe: Option<Option<bool>>,
}

/// Where the served store lives.
enum Backend {
    Engine(PathBuf),
    Postgres {
        url: String,
        schema: String,
        allow_unsafe: bool,
    },
}

/// Reads `name = value` lines; `#` starts a comment; values may be quoted.
fn read_config(path: &Path) -> Result<HashMap<String, String>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read config file {}: {e}", path.display())))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(CliError::usage(format!(
                "{}:{}: expected `name = value`",
                path.display(),
                i + 1
            )));
        };
        let key = k.trim().replace('_', "-");
        let known = [
            "data",
            "listen",
            "insecure",
            "dev",
            "tls-cert",
            "tls-key",
            "tls-ca",
            "metrics-anonymous",
            "jwks-file",
            "jwt-issuer",
            "jwt-audience",
            "jwt-user-claim",
            "jwt-groups-claim",
            "advertise",
            "backup-root",
            "scavenge-schedule",
            "segment-bytes",
            "compress-segments",
            "archive",
            "archive-endpoint",
            "archive-region",
            "archive-allow-http",
            "archive-keep-local",
            "encryption-key-file",
            "encrypt-at-rest",
            "max-append-bytes",
            "max-inflight-append-bytes",
            "max-connections",
            "max-concurrent-streams",
            "keepalive-interval",
            "keepalive-timeout",
            "header-read-timeout",
            "idle-timeout",
            "shutdown-grace",
            "backend",
            "postgres-url",
            "postgres-schema",
            "postgres-allow-unsafe",
        ];
        if !known.contains(&key.as_str()) {
            return Err(CliError::usage(format!(
                "{}:{}: unknown setting {key:?} (known: {})",
                path.display(),
                i + 1,
                known.join(", ")
            )));
        }
        out.insert(key, v.trim().trim_matches('"').to_owned());
    }
    Ok(out)
}

/// How the port is protected (ADR 30).
enum Security {
    /// `--insecure`: plain TCP, any or no credentials.
    Insecure,
    /// TLS with these files.
    Tls(factum_server::tls::TlsFiles),
    /// `--dev`: TLS with the development certificates in the data
    /// directory (made on first start).
    Dev(PathBuf),
}

/// The settings after layering flags, environment and file.
struct Settings {
    backend: Backend,
    listen: String,
    security: Security,
    metrics_anonymous: bool,
    bearer: Option<factum_server::bearer::BearerConfig>,
    advertise: Option<factum_server::Advertise>,
    backup_root: Option<PathBuf>,
    scavenge_schedule: Option<factum_server::Schedule>,
    segment_bytes: Option<u64>,
    compress_segments: factum_engine::CompressPolicy,
    /// The archive and what is kept locally (ADR 43).
    archive: super::archive::ArchiveConn,
    archive_keep_local: Option<Duration>,
    /// More `/metrics` text from the backend (set once the store is open).
    extra_metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    encryption_key_file: Option<PathBuf>,
    encrypt_at_rest: bool,
    max_append_bytes: Option<u64>,
    max_inflight_append_bytes: Option<u64>,
    connections: factum_server::ConnectionLimits,
    grace: Duration,
}

fn settings(args: ServeArgs) -> Result<Settings, CliError> {
    let file = match &args.config {
        Some(p) => read_config(p)?,
        None => HashMap::new(),
    };
    let num = |key: &str| -> Result<Option<u64>, CliError> {
        file.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| CliError::usage(format!("config {key} = {v:?} is not a number")))
            })
            .transpose()
    };
    let backend_name = args
        .backend
        .or_else(|| file.get("backend").cloned())
        .unwrap_or_else(|| "engine".into());
    let backend = match backend_name.as_str() {
        "engine" => Backend::Engine(
            args.data
                .or_else(|| file.get("data").map(PathBuf::from))
                .ok_or_else(|| {
                    CliError::usage(
                        "--data DIR is required (or FACTUM_DATA, or data = … in the config file)",
                    )
                })?,
        ),
        "postgres" => Backend::Postgres {
            url: args
                .postgres_url
                .or_else(|| file.get("postgres-url").cloned())
                .ok_or_else(|| {
                    CliError::usage(
                        "--backend postgres needs --postgres-url URL (or FACTUM_POSTGRES_URL)",
                    )
                })?,
            schema: args
                .postgres_schema
                .or_else(|| file.get("postgres-schema").cloned())
                .unwrap_or_else(|| "factum".into()),
            allow_unsafe: switch(args.postgres_allow_unsafe, &file, "postgres-allow-unsafe")?,
        },
        other => {
            return Err(CliError::usage(format!(
                "unknown backend {other:?}: use engine or postgres"
            )))
        }
    };
    let insecure = switch(args.insecure, &file, "insecure")?;
    let dev = switch(args.dev, &file, "dev")?;
    let path = |flag: Option<PathBuf>, key: &str| flag.or_else(|| file.get(key).map(PathBuf::from));
    let (tls_cert, tls_key, tls_ca) = (
        path(args.tls_cert, "tls-cert"),
        path(args.tls_key, "tls-key"),
        path(args.tls_ca, "tls-ca"),
    );
    let security = security(&backend, insecure, dev, tls_cert, tls_key, tls_ca)?;
    let metrics_anonymous = switch(args.metrics_anonymous, &file, "metrics-anonymous")?;
    let text = |flag: Option<String>, key: &str| flag.or_else(|| file.get(key).cloned());
    let bearer = bearer(
        &security,
        path(args.jwks_file, "jwks-file"),
        text(args.jwt_issuer, "jwt-issuer"),
        text(args.jwt_audience, "jwt-audience"),
        text(args.jwt_user_claim, "jwt-user-claim"),
        text(args.jwt_groups_claim, "jwt-groups-claim"),
    )?;
    let mut connections = factum_server::ConnectionLimits::default();
    let positive = |key: &str, v: Option<u64>| -> Result<Option<u64>, CliError> {
        match v {
            Some(0) => Err(CliError::usage(format!("{key} must be at least 1"))),
            v => Ok(v),
        }
    };
    let secs = |v: u64| Duration::from_secs(v);
    if let Some(n) = positive(
        "max-connections",
        args.max_connections.or(num("max-connections")?),
    )? {
        connections.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(n) = positive(
        "max-concurrent-streams",
        args.max_concurrent_streams
            .or(num("max-concurrent-streams")?),
    )? {
        connections.max_concurrent_streams = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = positive(
        "keepalive-interval",
        args.keepalive_interval.or(num("keepalive-interval")?),
    )? {
        connections.keepalive_interval = secs(n);
    }
    if let Some(n) = positive(
        "keepalive-timeout",
        args.keepalive_timeout.or(num("keepalive-timeout")?),
    )? {
        connections.keepalive_timeout = secs(n);
    }
    if let Some(n) = positive(
        "header-read-timeout",
        args.header_read_timeout.or(num("header-read-timeout")?),
    )? {
        connections.header_read_timeout = secs(n);
    }
    if let Some(n) = positive("idle-timeout", args.idle_timeout.or(num("idle-timeout")?))? {
        connections.idle_timeout = secs(n);
    }
    let compress_segments = match args
        .compress_segments
        .or_else(|| file.get("compress-segments").cloned())
    {
        None => factum_engine::CompressPolicy::Off,
        Some(w) => match super::compact::policy("--compress-segments", &w)? {
            factum_engine::CompressPolicy::Off => factum_engine::CompressPolicy::Off,
            _ if matches!(backend, Backend::Postgres { .. }) => {
                return Err(CliError::usage(
                    "--compress-segments applies to the embedded engine's segments; PostgreSQL compresses its own pages (TOAST)",
                ))
            }
            p => p,
        },
    };
    let archive = super::archive::ArchiveConn {
        archive: args
            .archive
            .archive
            .or_else(|| file.get("archive").cloned()),
        s3: super::archive::S3Options {
            archive_endpoint: args
                .archive
                .s3
                .archive_endpoint
                .or_else(|| file.get("archive-endpoint").cloned()),
            archive_region: args
                .archive
                .s3
                .archive_region
                .or_else(|| file.get("archive-region").cloned()),
            archive_allow_http: switch(
                args.archive.s3.archive_allow_http.then_some(Some(true)),
                &file,
                "archive-allow-http",
            )?,
        },
    };
    let archive_keep_local = super::archive::keep_local(
        &args
            .archive_keep_local
            .or_else(|| file.get("archive-keep-local").cloned())
            .unwrap_or_else(|| "forever".into()),
    )?;
    if archive.archive.is_some() && matches!(backend, Backend::Postgres { .. }) {
        return Err(CliError::usage(
            "--archive applies to the embedded engine's segments, not to PostgreSQL",
        ));
    }
    Ok(Settings {
        backend,
        archive,
        archive_keep_local,
        extra_metrics: None,
        listen: args
            .listen
            .or_else(|| file.get("listen").cloned())
            .unwrap_or_else(|| "127.0.0.1:2113".to_owned()),
        security,
        metrics_anonymous,
        bearer,
        advertise: args
            .advertise
            .or_else(|| file.get("advertise").cloned())
            .map(|a| {
                a.parse::<factum_server::Advertise>()
                    .map_err(|e| CliError::usage(format!("--advertise {e}")))
            })
            .transpose()?,
        backup_root: args
            .backup_root
            .or_else(|| file.get("backup-root").map(PathBuf::from)),
        scavenge_schedule: args
            .scavenge_schedule
            .or_else(|| file.get("scavenge-schedule").cloned())
            .map(|w| {
                w.parse::<factum_server::Schedule>()
                    .map_err(|e| CliError::usage(format!("--scavenge-schedule: {e}")))
            })
            .transpose()?,
        segment_bytes: match args.segment_bytes.or(num("segment-bytes")?) {
            Some(n) if n < 64 * 1024 => {
                return Err(CliError::usage(format!(
                    "--segment-bytes {n} is too small: at least 65536"
                )))
            }
            n => n,
        },
        compress_segments,
        encryption_key_file: args
            .encryption_key_file
            .or_else(|| file.get("encryption-key-file").map(PathBuf::from)),
        encrypt_at_rest: match args
            .encrypt_at_rest
            .or_else(|| file.get("encrypt-at-rest").map(String::from))
        {
            Some(v) => super::parse_on_off("--encrypt-at-rest", &v)?,
            None => true,
        },
        max_append_bytes: args.max_append_bytes.or(num("max-append-bytes")?),
        max_inflight_append_bytes: args
            .max_inflight_append_bytes
            .or(num("max-inflight-append-bytes")?),
        connections,
        grace: Duration::from_secs(args.shutdown_grace.or(num("shutdown-grace")?).unwrap_or(30)),
    })
}

/// The one protection the settings ask for, or why they contradict.
fn security(
    backend: &Backend,
    insecure: bool,
    dev: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Security, CliError> {
    let tls_given = cert.is_some() || key.is_some() || client_ca.is_some();
    if insecure && (dev || tls_given) {
        return Err(CliError::usage(
            "--insecure serves without TLS: drop it, or drop --dev / --tls-cert / --tls-key / --tls-ca",
        ));
    }
    if insecure {
        return Ok(Security::Insecure);
    }
    if dev {
        if tls_given {
            return Err(CliError::usage(
                "--dev makes its own certificates: drop --tls-cert / --tls-key / --tls-ca",
            ));
        }
        return match backend {
            Backend::Engine(data) => Ok(Security::Dev(data.clone())),
            Backend::Postgres { .. } => Err(CliError::usage(
                "--dev keeps its certificates in the data directory: use the engine backend, \
                 or make certificates with `factum certs create-ca` and `factum certs create-node`",
            )),
        };
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Security::Tls(factum_server::tls::TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (Some(_), None) => Err(CliError::usage(
            "--tls-cert needs --tls-key (the certificate's private key)",
        )),
        (None, Some(_)) => Err(CliError::usage(
            "--tls-key needs --tls-cert (the node's certificate)",
        )),
        (None, None) => Err(CliError::usage(
            "a secure server needs a certificate: --tls-cert FILE --tls-key FILE (make them with \
             `factum certs create-ca` then `factum certs create-node --ip … --dns …`), or --dev \
             for a development certificate, or --insecure to serve without TLS and users",
        )),
    }
}

/// Bearer tokens, when a JWKS file is given (ADR 34): issuer and audience
/// are required (a token for another service must not pass), and only a
/// secure server takes them.
fn bearer(
    security: &Security,
    jwks_file: Option<PathBuf>,
    issuer: Option<String>,
    audience: Option<String>,
    user_claim: Option<String>,
    groups_claims: Option<String>,
) -> Result<Option<factum_server::bearer::BearerConfig>, CliError> {
    let Some(jwks_file) = jwks_file else {
        if issuer.is_some() || audience.is_some() || user_claim.is_some() || groups_claims.is_some()
        {
            return Err(CliError::usage(
                "--jwt-issuer / --jwt-audience / --jwt-user-claim / --jwt-groups-claim need --jwks-file",
            ));
        }
        return Ok(None);
    };
    if matches!(security, Security::Insecure) {
        return Err(CliError::usage(
            "--insecure accepts any or no credentials: drop --jwks-file, or serve securely",
        ));
    }
    let (Some(issuer), Some(audience)) = (issuer, audience) else {
        return Err(CliError::usage(
            "--jwks-file needs --jwt-issuer and --jwt-audience (the iss and aud tokens must carry)",
        ));
    };
    let mut config = factum_server::bearer::BearerConfig::new(jwks_file, issuer, audience);
    if let Some(claim) = user_claim {
        config.user_claim = claim;
    }
    if let Some(claims) = groups_claims {
        config.groups_claims = claims
            .split(',')
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
    }
    Ok(Some(config))
}

/// A yes/no setting: the flag (bare means true), else the config file's
/// `true` / `false`, else false.
fn switch(
    flag: Option<Option<bool>>,
    file: &HashMap<String, String>,
    key: &str,
) -> Result<bool, CliError> {
    match flag {
        Some(v) => Ok(v.unwrap_or(true)),
        None => match file.get(key).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(CliError::usage(format!(
                "config {key} = {v:?}: use true or false"
            ))),
        },
    }
}

/// Bytes of the files directly in `dir` (the store's segments and index).
fn dir_size(dir: &Path) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).ok()? {
        let meta = entry.ok()?.metadata().ok()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Some(total)
}

async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the server runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Runs `factum serve` until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    let mut s = settings(args)?;
    match &s.backend {
        Backend::Engine(data) => {
            std::fs::create_dir_all(data)
                .map_err(|e| CliError::failure(format!("cannot create {}: {e}", data.display())))?;
            let mut engine_config = EngineConfig {
                encryption: super::at_rest_key(
                    s.encryption_key_file.as_deref(),
                    Some(s.encrypt_at_rest),
                )?,
                ..EngineConfig::default()
            };
            if let Some(n) = s.segment_bytes {
                engine_config.segment_bytes = n;
            }
            engine_config.archive = s.archive.open()?;
            let archiving =
                engine_config
                    .archive
                    .is_some()
                    .then_some(factum_engine::ArchiveOptions {
                        evict_after: s.archive_keep_local,
                    });
            let engine = Arc::new(open(data, engine_config)?);
            let compaction =
                super::compact::Background::start(engine.clone(), s.compress_segments, archiving)?;
            let metered = engine.clone();
            s.extra_metrics = Some(Arc::new(move || super::archive::metrics_text(&metered)));
            let scavenge: Arc<dyn factum_server::Scavenger> =
                Arc::new(EngineScavenger(engine.clone()));
            let rt = runtime()?;
            let dir = data.clone();
            let probe: SizeProbe = Arc::new(move || dir_size(&dir));
            let what = data.display().to_string();
            // Crash-only after a failed fsync (ADR 12): exit non-zero so a
            // supervisor restarts the server, whose open recovers the log.
            let fatal: Fatal = Box::pin(engine.stopped_for_good());
            let backed = engine.clone();
            let root = s.backup_root.clone();
            let backup: factum_server::BackupHook = Arc::new(move |to| {
                let to = backup_target(root.as_deref(), &to)?;
                let r = backed.backup(&to)?;
                Ok(serde_json::json!({
                    "position": r.position.0,
                    "files": r.files,
                    "files_copied": r.files_copied,
                    "bytes_copied": r.bytes_copied,
                    "bytes_total": r.bytes_total,
                    "index_bytes": r.index_bytes,
                    "files_checked": r.files_checked,
                    "to": to,
                }))
            });
            let result = match super::forget::master_key(s.encryption_key_file.as_deref())? {
                None => {
                    super::forget::refuse_keys_without_master(data)?;
                    rt.block_on(serve_store(
                        &s,
                        engine.clone(),
                        Some(probe),
                        Some(backup),
                        Some(scavenge),
                        None,
                        Some(fatal),
                        &what,
                    ))
                }
                Some(master) => {
                    let keys = super::forget::engine_keys(data, master)?;
                    let store = factum_crypto::Shredding::new(engine.clone(), Arc::new(keys));
                    let forget = super::forget::forget_hook(store.clone());
                    rt.block_on(serve_store(
                        &s,
                        Arc::new(store),
                        Some(probe),
                        Some(backup),
                        Some(scavenge),
                        Some(forget),
                        Some(fatal),
                        &format!("{what} (personal fields encrypted)"),
                    ))
                }
            };
            rt.shutdown_timeout(Duration::from_secs(1));
            compaction.stop();
            let closed = engine.close();
            eprintln!("store closed");
            result.and(closed.map_err(CliError::from))
        }
        Backend::Postgres {
            url,
            schema,
            allow_unsafe,
        } => {
            let rt = runtime()?;
            let mut config =
                factum_postgres::PostgresConfig::new(url.clone()).schema(schema.clone());
            config.allow_unsafe = *allow_unsafe;
            let master = super::forget::master_key(s.encryption_key_file.as_deref())?;
            let result = rt.block_on(async {
                let store = factum_postgres::PostgresStore::connect(config)
                    .await
                    .map_err(|e| CliError::failure(format!("PostgreSQL: {e}")))?;
                let what = format!("PostgreSQL schema {schema}");
                let scavenge: Arc<dyn factum_server::Scavenger> =
                    Arc::new(super::pg_scavenge::PostgresScavenger::new(store.clone()));
                match master {
                    None => {
                        // As for the engine's key file: without the master
                        // key, events naming a subject would be written in
                        // plaintext beside encrypted ones.
                        if store
                            .has_subject_keys()
                            .await
                            .map_err(|e| CliError::failure(e.to_string()))?
                        {
                            return Err(CliError::usage(format!(
                                "PostgreSQL schema {schema} holds subject keys (crypto-shredding): give the master key with --encryption-key-file FILE (FACTUM_ENCRYPTION_KEY_FILE) or FACTUM_ENCRYPTION_KEY"
                            )));
                        }
                                                serve_store(
                            &s,
                            Arc::new(store),
                            None,
                            None,
                            Some(scavenge),
                            None,
                            None,
                            &what,
                        )
                        .await
                    }
                    Some(master) => {
                        let keys = store.subject_keys(master);
                        keys.check_master()
                            .await
                            .map_err(|e| CliError::usage(e.to_string()))?;
                        let keys = Arc::new(keys);
                        let store = factum_crypto::Shredding::new(Arc::new(store), keys);
                        let forget = super::forget::forget_hook(store.clone());
                        let what = format!("{what} (personal fields encrypted)");
                        serve_store(
                            &s,
                            Arc::new(store),
                            None,
                            None,
                            Some(scavenge),
                            Some(forget),
                            None,
                            &what,
                        )
                        .await
                    }
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
            result
        }
    }
}

type SizeProbe = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

/// Resolves with the reason when the store stopped accepting writes for
/// good (the engine after a failed fsync).
type Fatal = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// The engine's scavenges, as the server drives them (ADR 33).
struct EngineScavenger(Arc<factum_engine::Engine>);

fn scavenge_info(s: factum_engine::ScavengeStatus) -> factum_server::ScavengeInfo {
    use factum_engine::scavenge::ScavengeEnd;
    let (result, error) = match s.end {
        ScavengeEnd::Running => ("InProgress", String::new()),
        ScavengeEnd::Completed => ("Success", String::new()),
        ScavengeEnd::Stopped => ("Stopped", String::new()),
        ScavengeEnd::Failed(why) => ("Failed", why),
    };
    let r = &s.report;
    factum_server::ScavengeInfo {
        scavenge_id: s.id,
        result: result.to_owned(),
        error,
        start_from_segment: s.start_from_segment,
        segments_total: r.segments_total,
        segments_done: r.segments_done,
        segments_rewritten: r.segments_rewritten,
        events_removed: r.events_removed,
        space_saved: r.bytes_freed(),
        time_taken_ms: r.elapsed.as_millis() as u64,
        scavenge_link: format!("/streams/$scavenges-{}", s.id),
    }
}

impl factum_server::Scavenger for EngineScavenger {
    fn start(
        &self,
        request: factum_server::ScavengeRequest,
    ) -> factum_core::Result<factum_server::ScavengeStart> {
        let options = factum_engine::ScavengeOptions {
            throttle: factum_engine::Throttle::Percent(request.throttle_percent),
            start_from_segment: request.start_from_segment,
            min_freed_percent: request.threshold.clamp(0, 100) as u8,
            ..factum_engine::ScavengeOptions::default()
        };
        match self.0.start_scavenge(options) {
            // Detached: its status is read through the engine.
            Ok(handle) => Ok(factum_server::ScavengeStart::Started(handle.id)),
            Err(e) => match self.0.scavenge_current() {
                Some(running) => Ok(factum_server::ScavengeStart::InProgress(running.id)),
                None => Err(e),
            },
        }
    }

    fn stop(&self, id: Option<factum_core::Uuid>) -> bool {
        self.0.stop_scavenge(id)
    }

    fn current(&self) -> Option<factum_server::ScavengeInfo> {
        self.0.scavenge_current().map(scavenge_info)
    }

    fn last(&self) -> Option<factum_server::ScavengeInfo> {
        self.0.scavenge_last().map(scavenge_info)
    }

    fn merge_indexes(&self) -> factum_core::Result<()> {
        self.0.flush_index()
    }
}

/// Where an online backup asked for `to` goes: `to` taken relative to the
/// backup root, and refused when there is no root or it would leave it.
fn backup_target(root: Option<&Path>, to: &Path) -> factum_core::Result<PathBuf> {
    let Some(root) = root else {
        return Err(factum_core::Error::InvalidInput(
            "online backups are off: start the server with --backup-root DIR (FACTUM_BACKUP_ROOT) to allow them under DIR".into(),
        ));
    };
    let relative = to.strip_prefix(root).unwrap_or(to);
    let inside = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside || relative.as_os_str().is_empty() {
        return Err(factum_core::Error::InvalidInput(format!(
            "a backup goes into a directory under the backup root {}: {} is not",
            root.display(),
            to.display()
        )));
    }
    Ok(root.join(relative))
}

/// Serves `store` until SIGTERM or SIGINT, then waits up to the grace period
/// for in-flight requests. When `fatal` resolves first it shuts down the
/// same way and fails with its reason (exit 1).
#[allow(clippy::too_many_arguments)]
async fn serve_store<S: factum_core::EventStore>(
    s: &Settings,
    store: Arc<S>,
    size_probe: Option<SizeProbe>,
    backup: Option<factum_server::BackupHook>,
    scavenge: Option<Arc<dyn factum_server::Scavenger>>,
    forget: Option<factum_server::ForgetHook>,
    fatal: Option<Fatal>,
    what: &str,
) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(&s.listen)
        .await
        .map_err(|e| CliError::failure(format!("cannot listen on {}: {e}", s.listen)))?;
    let bound = listener.local_addr()?;
    let advertise = match &s.advertise {
        Some(a) => a.clone(),
        None => factum_server::Advertise::for_bound(bound),
    };
    let mut config = factum_server::ServerConfig::new(advertise);
    if let Some(m) = s.max_append_bytes {
        config.max_append_bytes = m;
    }
    if let Some(m) = s.max_inflight_append_bytes {
        config.max_inflight_append_bytes = m;
    }
    config.connections = s.connections.clone();
    config.size_probe = size_probe;
    config.extra_metrics = s.extra_metrics.clone();
    config.backup = backup;
    config.scavenge = scavenge;
    config.scavenge_schedule = s.scavenge_schedule;
    config.forget = forget;
    config.metrics_anonymous = s.metrics_anonymous;
    let files = match &s.security {
        Security::Insecure => None,
        Security::Tls(files) => Some(files.clone()),
        Security::Dev(data) => {
            std::fs::create_dir_all(data)
                .map_err(|e| CliError::failure(format!("cannot create {}: {e}", data.display())))?;
            let (ca, cert, key) = super::certs::ensure_dev(data)?;
            println!(
                "development mode: certificates in {}",
                ca.parent().unwrap_or(data).display()
            );
            println!("development CA: {}", ca.display());
            println!(
                "connect with: esdb://admin:changeit@localhost:{}?tls=true&tlsCaFile={}",
                bound.port(),
                ca.display()
            );
            Some(factum_server::tls::TlsFiles {
                cert,
                key,
                client_ca: Some(ca),
            })
        }
    };
    let mode = match files {
        None => "insecure",
        Some(files) => {
            let tls = factum_server::tls::Reloading::new(files)
                .map_err(|e| CliError::usage(format!("TLS: {e}")))?;
            config.tls = Some(Arc::new(tls));
            // Secure: users in the store, credentials required (ADR 31).
            // Initial passwords only from the environment: a flag would
            // show in `ps`.
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            config.users = Some(factum_server::UsersConfig {
                admin_password: env("FACTUM_DEFAULT_ADMIN_PASSWORD"),
                ops_password: env("FACTUM_DEFAULT_OPS_PASSWORD"),
            });
            "TLS, users"
        }
    };
    if let Some(bearer) = &s.bearer {
        let bearer = factum_server::bearer::Bearer::new(bearer.clone())
            .map_err(|e| CliError::usage(format!("bearer tokens: {e}")))?;
        config.bearer = Some(Arc::new(bearer));
    }
    println!("factum serving {what} on {bound} (gRPC and HTTP; {mode})");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The server also stops by itself (Operations' `Shutdown`).
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = factum_server::serve(listener, store, config, async {
        let _ = stop_rx.await;
    });
    let server = tokio::spawn(async move {
        let r = serving.await;
        let _ = ended_tx.send(());
        r
    });
    let fatal = async move {
        match fatal {
            Some(f) => f.await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        _ = signal() => None,
        _ = ended_rx => None,
        why = fatal => Some(why),
    };
    match &stopped {
        None => eprintln!("shutting down"),
        Some(why) => {
            tracing::error!(reason = %why, "the store stopped accepting writes for good: shutting down");
            eprintln!("the store failed for good: {why}");
            eprintln!("shutting down; a restart recovers the store from its log");
        }
    }
    let _ = stop_tx.send(());
    let drained = match tokio::time::timeout(s.grace, server).await {
        Ok(Ok(r)) => r.map_err(CliError::from),
        Ok(Err(e)) => Err(CliError::failure(format!("the server task failed: {e}"))),
        Err(_) => {
            eprintln!("requests still running after {:?}: closing anyway", s.grace);
            Ok(())
        }
    };
    match stopped {
        Some(why) => Err(CliError::failure(format!(
            "the store failed for good: {why}"
        ))),
        None => drained,
    }
}
