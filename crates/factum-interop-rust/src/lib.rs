//! Test-only crate: `tests/kurrentdb_client.rs` drives a real `factum serve`
//! with KurrentDB's official Rust client, `kurrentdb`. It lives apart so
//! that building Factum never compiles that client (its own tonic, prost
//! and TLS stack); only `cargo test` does.
#![forbid(unsafe_code)]
