//! Conformance suite (filled in by the testkit work).
