//! The archive cases against a real S3-compatible server (moto, started
//! here), and an S3 endpoint nothing listens on.
//!
//! Without moto the moto test prints `SKIPPED: …` and passes, except under
//! `CI=true`, where it fails.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use factum_archive::{open_archive, ArchiveOptions};
use factum_engine::Archive;
use object_store::aws::AmazonS3Builder;
use object_store::ObjectStore;

const BUCKET: &str = "factum-archive-test";

fn options(endpoint: &str) -> ArchiveOptions {
    ArchiveOptions::default()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_credentials("testing", "testing")
}

/// An object's ETag, read past the archive with object_store itself.
fn etag_of(endpoint: &str, key: &str) -> String {
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_bucket_name(BUCKET)
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let meta = runtime
        .block_on(store.head(&object_store::path::Path::from(key)))
        .unwrap();
    meta.e_tag.unwrap_or_else(|| panic!("no ETag for {key}"))
}

/// One moto for every case (it takes seconds to start); each case works
/// under its own prefix, which also shows that prefixes keep archives apart.
#[test]
fn s3_archive_against_moto() {
    let moto = match common::Moto::start() {
        Ok(moto) => moto,
        Err(reason) => {
            return common::skip(&format!("no S3 server for the S3 archive tests: {reason}"))
        }
    };
    moto.create_bucket(BUCKET);
    let options = options(&moto.endpoint);
    let open = |prefix: &str| -> Arc<dyn Archive> {
        open_archive(&format!("s3://{BUCKET}/{prefix}"), &options).unwrap()
    };
    let scratch = tempfile::tempdir().unwrap();

    let archive = open("node-1/round-trip");
    assert_eq!(
        archive.describe(),
        format!("s3://{BUCKET}/node-1/round-trip at {}", moto.endpoint)
    );
    common::round_trip(archive.as_ref(), scratch.path());

    let started = Instant::now();
    common::multipart_round_trip(open("node-1/multipart").as_ref(), scratch.path());
    println!("multipart round trip: {:?}", started.elapsed());
    // It really went up in parts: S3 gives a multipart object the ETag
    // "<md5 of the parts' md5s>-<parts>".
    let etag = etag_of(
        &moto.endpoint,
        &format!("node-1/multipart/{}", common::MULTIPART_NAME),
    );
    assert!(etag.ends_with("-3\""), "ETag {etag}");
    // And a small one in one PUT: a plain MD5.
    let etag = etag_of(&moto.endpoint, "node-1/round-trip/00000000000000100000.seg");
    assert!(!etag.contains('-'), "ETag {etag}");

    common::missing_object(open("node-1/missing").as_ref());

    // The bucket's top level: the objects above live under prefixes, so
    // they are not this archive's.
    let top = open_archive(&format!("s3://{BUCKET}"), &options).unwrap();
    assert_eq!(top.list().unwrap(), vec![]);
    let name = "00000000000000000000.seg";
    top.put(name, &common::file(scratch.path(), "top", b"top level"))
        .unwrap();
    assert_eq!(top.list().unwrap().len(), 1);
    assert_eq!(&top.get_range(name, 4, 100).unwrap()[..], b"level");
    // And the prefixed archive does not see it.
    assert_eq!(open("node-1/missing").list().unwrap(), vec![]);

    // Settings from the standard AWS variables alone. (The other tests in
    // this binary set every one of these explicitly, so they do not mind.)
    let variables = [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    for (variable, value) in variables {
        std::env::set_var(variable, value);
    }
    let from_environment = open_archive(&format!("s3://{BUCKET}"), &ArchiveOptions::default());
    for (variable, _) in variables {
        std::env::remove_var(variable);
    }
    let from_environment = from_environment.unwrap();
    assert_eq!(
        from_environment.describe(),
        format!("s3://{BUCKET} at {}", moto.endpoint)
    );
    assert_eq!(from_environment.list().unwrap(), top.list().unwrap());

    // A bucket that does not exist: the store answers, and says so.
    let nowhere = open_archive("s3://no-such-bucket/p", &options).unwrap();
    let error = nowhere.get_range(name, 0, 10).unwrap_err();
    common::assert_unavailable_naming(&error, &["s3://no-such-bucket/p", name]);
    let error = nowhere.list().unwrap_err();
    common::assert_unavailable_naming(&error, &["s3://no-such-bucket/p"]);
    let error = nowhere.delete(name).unwrap_err();
    common::assert_unavailable_naming(&error, &["s3://no-such-bucket/p", name]);
}

/// Every call on an archive whose endpoint refuses connections fails,
/// naming the endpoint, bucket, prefix and object, within seconds.
#[test]
fn unreachable_endpoint_fails_within_seconds() {
    let endpoint = format!("http://127.0.0.1:{}", common::closed_port());
    fails_quickly(&endpoint, &options(&endpoint), Duration::from_secs(15));
}

/// The same for an address that is never routed (TEST-NET-1, RFC 5737):
/// where the network drops the packets, the connection timeout bounds each
/// attempt; some networks refuse at once.
#[test]
fn unroutable_endpoint_fails_within_seconds() {
    let endpoint = "http://192.0.2.1:9000";
    fails_quickly(endpoint, &options(endpoint), Duration::from_secs(15));
}

/// A server that accepts connections and never answers: the request
/// timeout bounds each attempt (short here; 30 s by default, room for one
/// part or ranged read on a slow link).
#[test]
fn stalled_endpoint_fails_within_the_request_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accept and hold every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let options = options(&endpoint)
        .with_request_timeout(Duration::from_secs(2))
        .with_retries(3, Duration::from_secs(1));
    // One attempt each (it outlasts the retry window), and nothing after
    // it: a second request (a HEAD after a failed ranged GET) would show.
    fails_quickly(&endpoint, &options, Duration::from_millis(3_500));
}

/// One call on the archive, expected to fail.
type FailingCall<'a> = Box<dyn Fn() -> factum_core::Error + 'a>;

/// Every call fails within `limit`, `Unavailable`, naming the endpoint,
/// bucket, prefix and (but for `list`) the object.
fn fails_quickly(endpoint: &str, options: &ArchiveOptions, limit: Duration) {
    let archive = open_archive("s3://bucket/node-1", options).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let segment = common::file(scratch.path(), "segment", &common::content(1_000, 5));
    let name = "00000000000000000000.seg";
    let calls: [(&str, FailingCall); 5] = [
        ("size", Box::new(|| archive.size(name).unwrap_err())),
        (
            "get_range",
            Box::new(|| archive.get_range(name, 0, 10).unwrap_err()),
        ),
        ("put", Box::new(|| archive.put(name, &segment).unwrap_err())),
        ("list", Box::new(|| archive.list().unwrap_err())),
        ("delete", Box::new(|| archive.delete(name).unwrap_err())),
    ];
    for (call, fail) in calls {
        let started = Instant::now();
        let error = fail();
        let took = started.elapsed();
        println!("{endpoint}: {call} failed in {took:?}: {error}");
        let mut names = vec![endpoint, "s3://bucket/node-1"];
        if call != "list" {
            names.push(name);
        }
        common::assert_unavailable_naming(&error, &names);
        assert!(took < limit, "{call} took {took:?}");
    }
}
