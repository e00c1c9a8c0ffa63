//! The one AEAD: XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`)
//! with a random 192-bit nonce per message, from the system CSPRNG. At
//! 2^-96 collision odds after 2^48 messages under one key, random nonces
//! are safe without any counter to persist, which is why this AEAD and
//! not AES-GCM (96-bit nonces): no nonce is ever derived from an offset or
//! a position, so rewriting or recovering data can never repeat one.
//!
//! A sealed message is `nonce (24) | ciphertext | tag (16)`. The
//! associated data binds it to its place (a subject and an event id, or a
//! key-store record), so a ciphertext moved elsewhere does not open.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use ring::rand::{SecureRandom, SystemRandom};

use crate::master::SecretKey;
use crate::CryptoError;

/// Nonce length.
pub const NONCE_LEN: usize = 24;
/// Tag length.
pub const TAG_LEN: usize = 16;
/// What sealing adds to a message.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Fills `out` from the system CSPRNG.
pub fn fill_random(out: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| CryptoError::Random)
}

/// Encrypts `plaintext` under `key` with a fresh random nonce; appends
/// `nonce | ciphertext | tag` to `out`.
pub fn seal_into(
    key: &SecretKey,
    aad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let start = out.len();
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(
            &XNonce::from(nonce),
            aad,
            (&mut out[start + NONCE_LEN..]).into(),
        )
        .map_err(|_| CryptoError::Seal)?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// [`seal_into`] a new vector.
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    seal_into(key, aad, plaintext, &mut out)?;
    Ok(out)
}

/// Decrypts what [`seal`] made; `None` when it does not open under `key`
/// and `aad` (wrong key, moved, or damaged: the AEAD cannot tell which).
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < OVERHEAD {
        return None;
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let mut plaintext = body.to_vec();
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt_inout_detached(
            &XNonce::from(nonce),
            aad,
            plaintext.as_mut_slice().into(),
            &Tag::from(tag),
        )
        .ok()?;
    Some(plaintext)
}

/// Encrypts `buf` in place under `key` with a fresh random nonce, which
/// it writes to `nonce`; returns the tag. The same AEAD as [`seal`], for
/// callers that lay out nonce, ciphertext and tag themselves (the engine's
/// encrypted segment pages and blocks, ADR 45).
pub fn seal_in_place(
    key: &SecretKey,
    aad: &[u8],
    nonce: &mut [u8; NONCE_LEN],
    buf: &mut [u8],
) -> Result<[u8; TAG_LEN], CryptoError> {
    fill_random(nonce)?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(*nonce), aad, buf.into())
        .map_err(|_| CryptoError::Seal)?;
    Ok(tag.into())
}

/// Decrypts in place what [`seal_in_place`] made; `false` (and `buf`
/// unspecified) when it does not open under `key` and `aad`.
pub fn open_in_place(
    key: &SecretKey,
    aad: &[u8],
    nonce: &[u8; NONCE_LEN],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> bool {
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt_inout_detached(&XNonce::from(*nonce), aad, buf.into(), &Tag::from(*tag))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_messages_open_only_with_their_key_and_place() {
        let key = SecretKey::random().unwrap();
        let other = SecretKey::random().unwrap();
        let a = seal(&key, b"here", b"secret").unwrap();
        let b = seal(&key, b"here", b"secret").unwrap();
        assert_ne!(a, b, "a fresh nonce each time");
        assert_eq!(a.len(), 6 + OVERHEAD);
        assert_eq!(open(&key, b"here", &a).unwrap(), b"secret");
        assert!(open(&key, b"there", &a).is_none());
        assert!(open(&other, b"here", &a).is_none());
        let mut flipped = a.clone();
        flipped[NONCE_LEN] ^= 1;
        assert!(open(&key, b"here", &flipped).is_none());
        assert!(open(&key, b"here", &a[..10]).is_none());
    }
}
