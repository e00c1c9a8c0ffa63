//! The CLI's error: a message and an exit code.

use std::fmt;

/// Exit code for invalid input or usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// An error to print as `error: <message>` before exiting with `code`.
/// An empty message prints nothing (e.g. a closed stdout pipe).
#[derive(Debug)]
pub struct CliError {
    /// The process exit code.
    pub code: u8,
    /// One line for the user.
    pub message: String,
}

impl CliError {
    /// Invalid input or usage: exit 2.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    /// Any other failure: exit 1.
    pub fn failure(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }

    /// Ends quietly with exit 0 (the reader of our output went away).
    pub fn quiet() -> Self {
        CliError {
            code: 0,
            message: String::new(),
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

impl From<factum_core::Error> for CliError {
    fn from(e: factum_core::Error) -> Self {
        use factum_core::Error;
        match &e {
            Error::InvalidInput(msg) => CliError::usage(format!("invalid input: {msg}")),
            Error::LimitExceeded { .. } => CliError::usage(e.to_string()),
            Error::Locked { .. } => CliError::failure(format!(
                "{e} (the embedded engine admits one process at a time: stop the other one first)"
            )),
            _ => CliError::failure(one_line(&e.to_string())),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::quiet()
        } else {
            CliError::failure(e.to_string())
        }
    }
}

/// Messages are printed on one line.
pub fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
