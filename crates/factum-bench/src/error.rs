//! The bench's error: one line for the user; the process exits with 1.
//! A closed stdout (`factum-bench --json | head -1`) ends it quietly.

use std::fmt;

/// What stopped a workload, printed as `error: <message>`.
#[derive(Debug)]
pub struct BenchError {
    /// One line for the user; empty when there is nothing to say.
    pub message: String,
}

impl BenchError {
    /// A failure with this message.
    pub fn failure(message: impl Into<String>) -> Self {
        BenchError {
            message: message.into(),
        }
    }

    /// Prefixes the message with context.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        if !self.message.is_empty() {
            self.message = format!("{what}: {}", self.message);
        }
        self
    }
}

impl From<factum_core::Error> for BenchError {
    fn from(e: factum_core::Error) -> Self {
        BenchError::failure(one_line(&e.to_string()))
    }
}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            BenchError::failure("")
        } else {
            BenchError::failure(e.to_string())
        }
    }
}

/// Messages are printed on one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
