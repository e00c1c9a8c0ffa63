//! The metadata convention of crypto-shredding (ADR 36), named in one
//! place for the writers (the toolkit, any client) and the reader that
//! applies it (`factum-crypto`): an event names its data subject in
//! `$subject` and, optionally, its personal top-level data fields in
//! `$personalFields` (none named: the whole data is personal). A store
//! that shreds stores each personal value as `{"$encrypted": "…"}`; once
//! the subject is forgotten, reads show each as `null` (the whole data:
//! JSON `null`, or no bytes for a binary event) and the metadata gains
//! `"$erased": true`.

/// The metadata key naming the data subject.
pub const SUBJECT: &str = "$subject";
/// The metadata key listing the personal top-level data fields.
pub const PERSONAL_FIELDS: &str = "$personalFields";
/// The key of an encrypted value's envelope in stored data.
pub const ENCRYPTED: &str = "$encrypted";
/// The metadata key marking an event whose personal fields were erased.
pub const ERASED: &str = "$erased";
