#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod options;
mod runtime;
mod s3;
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;

use factum_core::{Error, Result};
use factum_engine::{Archive, LocalArchive};

pub use options::ArchiveOptions;
pub use s3::{S3Archive, S3Location, MULTIPART_THRESHOLD, PART_SIZE};

/// What [`open_archive`] accepts, for its error messages.
const ACCEPTED: &str =
    "s3://bucket[/prefix] (S3 or an S3-compatible store), file:///absolute/dir, or a directory path";

/// Opens the archive that `spec` names:
///
/// - `s3://bucket/prefix`: an [`S3Archive`] with `options` (endpoint,
///   region, credentials, time limits; unset ones from the AWS environment
///   variables);
/// - `file:///absolute/dir` or a plain path: a
///   [`factum_engine::LocalArchive`] in that directory (created when
///   missing; `options` do not apply).
///
/// Anything else is `Error::InvalidInput` naming what is accepted. Opening
/// sends no request: an unreachable S3 archive shows on first use, as
/// `Error::Unavailable` naming it.
pub fn open_archive(spec: &str, options: &ArchiveOptions) -> Result<Arc<dyn Archive>> {
    match ArchiveSpec::parse(spec)? {
        ArchiveSpec::S3 => Ok(Arc::new(S3Archive::open(spec, options)?)),
        ArchiveSpec::Directory(dir) => Ok(Arc::new(LocalArchive::new(dir)?)),
    }
}

/// The kinds of archive a spec can name.
#[derive(Debug, PartialEq, Eq)]
enum ArchiveSpec {
    S3,
    Directory(PathBuf),
}

impl ArchiveSpec {
    fn parse(spec: &str) -> Result<Self> {
        let refuse = |why: &str| {
            Error::InvalidInput(format!("archive {spec:?}: {why}; accepted: {ACCEPTED}"))
        };
        if spec.trim().is_empty() {
            return Err(refuse("empty"));
        }
        let Some((scheme, rest)) = spec.split_once("://") else {
            return Ok(ArchiveSpec::Directory(PathBuf::from(spec)));
        };
        match scheme {
            "s3" => Ok(ArchiveSpec::S3),
            "file" => {
                // file:///dir or file://localhost/dir; another host would be
                // a remote file system this process cannot reach by path.
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(refuse(
                        "a file URL names an absolute directory on this host",
                    ));
                }
                Ok(ArchiveSpec::Directory(PathBuf::from(path)))
            }
            other => Err(refuse(&format!("unsupported scheme {other}://"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            ArchiveSpec::parse("s3://bucket/p").unwrap(),
            ArchiveSpec::S3
        );
        assert_eq!(
            ArchiveSpec::parse("file:///var/archive").unwrap(),
            ArchiveSpec::Directory("/var/archive".into())
        );
        assert_eq!(
            ArchiveSpec::parse("file://localhost/var/archive").unwrap(),
            ArchiveSpec::Directory("/var/archive".into())
        );
        assert_eq!(
            ArchiveSpec::parse("archive/dir").unwrap(),
            ArchiveSpec::Directory("archive/dir".into())
        );
        for bad in [
            "",
            "  ",
            "gs://bucket",
            "https://host/bucket",
            "file://host/dir",
            "file://rel",
        ] {
            let error = ArchiveSpec::parse(bad).unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(error, Error::InvalidInput(_)),
                "{bad:?}: {message}"
            );
            assert!(message.contains("s3://bucket"), "{bad:?}: {message}");
        }
    }
}
