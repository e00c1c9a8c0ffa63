//! The master key: where it comes from (a [`KeyProvider`]) and how it is
//! held (zeroed when dropped).
//!
//! A master key is 32 random bytes, written as 64 hexadecimal digits (a
//! trailing newline allowed), e.g. `openssl rand -hex 32 > master.key`.
//! It wraps keys, it never encrypts events itself. Providers today: a key
//! file (`--encryption-key-file FILE` / `FACTUM_ENCRYPTION_KEY_FILE`) and
//! an environment variable (`FACTUM_ENCRYPTION_KEY`); a KMS is one more
//! implementation of [`KeyProvider`].

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::CryptoError;

/// Length of every key Factum uses (XChaCha20-Poly1305's).
pub const KEY_LEN: usize = 32;

/// The environment variable holding the master key itself (hex).
pub const KEY_ENV: &str = "FACTUM_ENCRYPTION_KEY";

/// The environment variable naming the master key's file.
pub const KEY_FILE_ENV: &str = "FACTUM_ENCRYPTION_KEY_FILE";

/// 32 secret bytes, wiped from memory when dropped.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    /// A fresh key from the system's CSPRNG.
    pub fn random() -> Result<Self, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        crate::seal::fill_random(&mut bytes[..])?;
        Ok(SecretKey(bytes))
    }

    /// A key from its bytes (the caller's copy should be zeroed too).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(Zeroizing::new(bytes))
    }

    /// The key's bytes.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses 64 hex digits (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bad = || {
            CryptoError::BadMasterKey(format!(
                "a master key is {} hexadecimal digits (e.g. `openssl rand -hex 32`), found {} characters",
                KEY_LEN * 2,
                text.len()
            ))
        };
        if text.len() != KEY_LEN * 2 {
            return Err(bad());
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).ok_or_else(bad);
            bytes[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(SecretKey(bytes))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(…)")
    }
}

/// Where the master key comes from. Called once when a store opens; a KMS
/// implementation would unwrap a data key here.
pub trait KeyProvider: Send + Sync {
    /// The master key, or why there is none.
    fn master_key(&self) -> Result<SecretKey, CryptoError>;
    /// Where the key comes from, for messages (never the key).
    fn describe(&self) -> String;
}

/// A master key in a file of 64 hex digits.
#[derive(Clone, Debug)]
pub struct KeyFile(pub PathBuf);

impl KeyProvider for KeyFile {
    fn master_key(&self) -> Result<SecretKey, CryptoError> {
        let text = Zeroizing::new(std::fs::read_to_string(&self.0).map_err(|e| {
            CryptoError::BadMasterKey(format!("cannot read key file {}: {e}", self.0.display()))
        })?);
        SecretKey::from_hex(&text).map_err(|e| match e {
            CryptoError::BadMasterKey(why) => {
                CryptoError::BadMasterKey(format!("key file {}: {why}", self.0.display()))
            }
            other => other,
        })
    }
    fn describe(&self) -> String {
        format!("key file {}", self.0.display())
    }
}

/// A master key in an environment variable (hex).
#[derive(Clone, Debug)]
pub struct KeyEnv(pub String);

impl KeyProvider for KeyEnv {
    fn master_key(&self) -> Result<SecretKey, CryptoError> {
        let text = Zeroizing::new(std::env::var(&self.0).map_err(|_| {
            CryptoError::BadMasterKey(format!("environment variable {} is not set", self.0))
        })?);
        SecretKey::from_hex(&text).map_err(|e| match e {
            CryptoError::BadMasterKey(why) => {
                CryptoError::BadMasterKey(format!("environment variable {}: {why}", self.0))
            }
            other => other,
        })
    }
    fn describe(&self) -> String {
        format!("environment variable {}", self.0)
    }
}

/// The provider the settings name: a key file when given (flag or
/// `FACTUM_ENCRYPTION_KEY_FILE`), else `FACTUM_ENCRYPTION_KEY` when set,
/// else none (crypto-shredding off).
pub fn provider_from_settings(key_file: Option<&Path>) -> Option<Box<dyn KeyProvider>> {
    provider_from(key_file, KEY_FILE_ENV, KEY_ENV)
}

/// The same choice for any pair of variable names (`factum rekey` reads
/// its new key from `FACTUM_NEW_ENCRYPTION_KEY_FILE` /
/// `FACTUM_NEW_ENCRYPTION_KEY`): the file given, else the file named by
/// `file_env`, else the key itself in `key_env`; `None` when none is set.
pub fn provider_from(
    key_file: Option<&Path>,
    file_env: &str,
    key_env: &str,
) -> Option<Box<dyn KeyProvider>> {
    if let Some(path) = key_file {
        return Some(Box::new(KeyFile(path.to_path_buf())));
    }
    if let Some(path) = std::env::var_os(file_env).filter(|p| !p.is_empty()) {
        return Some(Box::new(KeyFile(PathBuf::from(path))));
    }
    std::env::var_os(key_env)
        .filter(|v| !v.is_empty())
        .map(|_| Box::new(KeyEnv(key_env.to_owned())) as Box<dyn KeyProvider>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_parse_and_bad_ones_say_why() {
        let key = SecretKey::from_hex(&format!("{}\n", "0f".repeat(32))).unwrap();
        assert_eq!(key.expose(), &[0x0f; 32]);
        let short = SecretKey::from_hex("abcd").unwrap_err().to_string();
        assert!(short.contains("64 hexadecimal digits"), "{short}");
        assert!(SecretKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{key:?}"), "SecretKey(…)");
    }

    #[test]
    fn a_missing_key_file_is_named() {
        let e = KeyFile("/nonexistent/master.key".into())
            .master_key()
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/master.key"), "{e}");
    }
}
