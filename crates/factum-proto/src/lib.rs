//! # factum-proto
//!
//! Factum's own `.proto` files for the KurrentDB (EventStoreDB) gRPC
//! protocol, compiled at build time with [protox](https://docs.rs/protox)
//! (no system `protoc`) into prost messages and tonic clients and servers.
//! Package names, service paths, field numbers and types match what the
//! official KurrentDB clients send and expect; see `proto/`.
//!
//! | module | protobuf package | services |
//! |---|---|---|
//! | [`shared`] | `event_store.client` | – (UUID, StreamIdentifier, status details) |
//! | [`status`] | `google.rpc` | – (KurrentDB's single-detail `Status`) |
//! | [`streams`] | `event_store.client.streams` | `Streams`: Read, Append, Delete, Tombstone, BatchAppend |
//! | [`server_features`] | `event_store.client.server_features` | `ServerFeatures`: GetSupportedMethods |
//! | [`gossip`] | `event_store.client.gossip` | `Gossip`: Read |
//! | [`projections`] | `event_store.client.projections` | `Projections`: Create, Update, Delete, Statistics, Disable, Enable, Reset, State, Result, RestartSubsystem |
//! | [`users`] | `event_store.client.users` | `Users`: Create, Update, Delete, Disable, Enable, Details, ChangePassword, ResetPassword |
//! | [`expected`] | – | expected/current revisions ⇄ wire, shared by server and client |
//! | [`v2_streams`] | `kurrentdb.protocol.v2.streams` (+ `.errors`) | `StreamsService`: AppendSession, AppendRecords (ADR 29) |
//! | [`ticks`] | – | .NET ticks (`created`, gossip time stamps, durations) ⇄ [`factum_core::Timestamp`] |
//! | [`wire`] | – | a cursor over a message's fields for the decoders written by hand (client reads, server appends) |
//! | [`persistent`] | `event_store.client.persistent_subscriptions` | `PersistentSubscriptions`: Create, Update, Delete, Read, GetInfo, ReplayParked, List, RestartSubsystem |
#![forbid(unsafe_code)]
#![allow(clippy::all, missing_docs)] // generated code

/// The generated code, nested as the protobuf packages are (generated
/// paths such as `super::super::Empty` rely on it).
#[allow(missing_docs)]
pub mod generated {
    pub mod event_store {
        pub mod client {
            tonic::include_proto!("event_store.client");
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
            pub mod server_features {
                tonic::include_proto!("event_store.client.server_features");
            }
            pub mod gossip {
                tonic::include_proto!("event_store.client.gossip");
            }
            pub mod persistent_subscriptions {
                tonic::include_proto!("event_store.client.persistent_subscriptions");
            }
            pub mod operations {
                tonic::include_proto!("event_store.client.operations");
            }
            pub mod users {
                tonic::include_proto!("event_store.client.users");
            }
            pub mod projections {
                tonic::include_proto!("event_store.client.projections");
            }
        }
    }
    pub mod kurrentdb {
        pub mod protocol {
            pub mod v2 {
                pub mod streams {
                    tonic::include_proto!("kurrentdb.protocol.v2.streams");
                    pub mod errors {
                        tonic::include_proto!("kurrentdb.protocol.v2.streams.errors");
                    }
                }
            }
        }
    }
    pub mod factum {
        pub mod subjects {
            tonic::include_proto!("factum.subjects");
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

/// `event_store.client`: messages shared by every service.
pub use generated::event_store::client as shared;
/// `event_store.client.gossip`: cluster membership for `+discover`.
pub use generated::event_store::client::gossip;
/// `event_store.client.operations`: scavenge and node operations (ADR 33).
pub use generated::event_store::client::operations;
/// `event_store.client.persistent_subscriptions`: consumer groups.
pub use generated::event_store::client::persistent_subscriptions as persistent;
/// `event_store.client.projections`: server-side projections (ADR 35).
pub use generated::event_store::client::projections;
/// `event_store.client.server_features`: what a server implements.
pub use generated::event_store::client::server_features;
/// `event_store.client.streams`: reads, subscriptions, appends, deletes.
pub use generated::event_store::client::streams;
/// `event_store.client.users`: user management.
pub use generated::event_store::client::users;
/// `factum.subjects`: crypto-shredding's `Forget` (Factum's own, ADR 36).
pub use generated::factum::subjects;
/// `google.rpc`: KurrentDB's variant of the gRPC status message.
pub use generated::google::rpc as status;
/// `kurrentdb.protocol.v2.streams`: multi-stream appends (ADR 29).
pub use generated::kurrentdb::protocol::v2::streams as v2_streams;

pub mod expected;
pub mod ticks;
pub mod wire;

/// Full gRPC service names, as they appear in request paths.
pub mod service_names {
    /// `event_store.client.streams.Streams`
    pub const STREAMS: &str = "event_store.client.streams.Streams";
    /// `event_store.client.server_features.ServerFeatures`
    pub const SERVER_FEATURES: &str = "event_store.client.server_features.ServerFeatures";
    /// `event_store.client.gossip.Gossip`
    pub const GOSSIP: &str = "event_store.client.gossip.Gossip";
    /// `event_store.client.persistent_subscriptions.PersistentSubscriptions`
    pub const PERSISTENT_SUBSCRIPTIONS: &str =
        "event_store.client.persistent_subscriptions.PersistentSubscriptions";
    /// `event_store.client.users.Users`
    pub const USERS: &str = "event_store.client.users.Users";
    /// `factum.subjects.Subjects` (Factum's own, ADR 36)
    pub const SUBJECTS: &str = "factum.subjects.Subjects";
    /// `event_store.client.projections.Projections`
    pub const PROJECTIONS: &str = "event_store.client.projections.Projections";
    /// `event_store.client.operations.Operations`
    pub const OPERATIONS: &str = "event_store.client.operations.Operations";
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Bytes written by hand from KurrentDB's field numbers decode to the
    /// intended request: a read of "order-1" from revision 5, 10 events,
    /// backwards, resolving links, string UUIDs.
    #[test]
    fn read_request_field_numbers() {
        let bytes: Vec<u8> = [
            &[0x0a, 25][..],      // ReadReq.options (1), 25 bytes
            &[0x0a, 13, 0x0a, 9], // Options.stream (1) → StreamOptions.stream_identifier (1)
            &[0x1a, 7],           // StreamIdentifier.stream_name (3)
            b"order-1",
            &[0x10, 5],          // StreamOptions.revision (2) = 5
            &[0x18, 1],          // Options.read_direction (3) = Backwards
            &[0x20, 1],          // Options.resolve_links (4) = true
            &[0x28, 10],         // Options.count (5) = 10
            &[0x4a, 2, 0x12, 0], // Options.uuid_option (9) → string (2)
        ]
        .concat();
        let req = streams::ReadReq::decode(bytes.as_slice()).unwrap();
        let o = req.options.unwrap();
        use streams::read_req::options::{
            stream_options::RevisionOption, CountOption, StreamOption,
        };
        let Some(StreamOption::Stream(s)) = o.stream_option else {
            panic!("not a stream read")
        };
        assert_eq!(&s.stream_identifier.unwrap().stream_name[..], b"order-1");
        assert_eq!(s.revision_option, Some(RevisionOption::Revision(5)));
        assert_eq!(o.read_direction, 1);
        assert!(o.resolve_links);
        assert_eq!(o.count_option, Some(CountOption::Count(10)));
        assert!(matches!(
            o.uuid_option.unwrap().content,
            Some(streams::read_req::options::uuid_option::Content::String(_))
        ));
    }

    /// The current-shape wrong-expected-version fields are 6..11 and the
    /// 20.6.0 shape 1..5; caught_up is ReadResp field 8.
    #[test]
    fn response_field_numbers() {
        use streams::append_resp::wrong_expected_version as wev;
        let m = streams::AppendResp {
            result: Some(streams::append_resp::Result::WrongExpectedVersion(
                streams::append_resp::WrongExpectedVersion {
                    current_revision_option: Some(wev::CurrentRevisionOption::CurrentRevision(3)),
                    expected_revision_option: Some(wev::ExpectedRevisionOption::ExpectedNoStream(
                        shared::Empty {},
                    )),
                    ..Default::default()
                },
            )),
        };
        // result.wrong_expected_version (2) { current_revision (6) = 3, expected_no_stream (11) = {} }
        assert_eq!(m.encode_to_vec(), vec![0x12, 4, 0x30, 3, 0x5a, 0]);

        let caught_up = streams::ReadResp {
            content: Some(streams::read_resp::Content::CaughtUp(
                streams::read_resp::CaughtUp {
                    timestamp: None,
                    stream_revision: Some(7),
                    position: None,
                },
            )),
        };
        assert_eq!(caught_up.encode_to_vec(), vec![0x42, 2, 0x10, 7]);

        let uuid = shared::Uuid {
            value: Some(shared::uuid::Value::Structured(shared::uuid::Structured {
                most_significant_bits: 1,
                least_significant_bits: -1,
            })),
        };
        let mut expected = vec![0x0a, 13, 0x08, 1, 0x10];
        expected.extend([0xff; 9]);
        expected.push(0x01);
        assert_eq!(uuid.encode_to_vec(), expected);
    }
}

/// Text in gRPC metadata values: header values must be visible ASCII, so
/// Factum percent-escapes anything else (and `%` itself) — e.g. a stream
/// name in `stream-name`. ASCII names travel unchanged, as KurrentDB sends them.
pub mod metadata_text {
    /// Escapes `value` for a metadata value.
    pub fn escape(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for c in value.chars() {
            if (' '..='~').contains(&c) && c != '%' {
                out.push(c);
            } else {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
        out
    }

    /// Undoes [`escape`].
    pub fn unescape(value: &str) -> String {
        let bytes = value.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips() {
            for s in ["order-1", "café-1 %", "$ce-x", "a%zz"] {
                assert_eq!(super::unescape(&super::escape(s)), s);
            }
            assert_eq!(super::escape("café %"), "caf%C3%A9 %25");
        }
    }
}
