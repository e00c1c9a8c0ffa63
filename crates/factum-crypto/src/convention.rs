//! The metadata convention and the transformation of one event.
//!
//! An event names its data subject in its JSON metadata, and optionally
//! which top-level fields of its JSON data are personal:
//!
//! ```json
//! {"$subject": "customer-42", "$personalFields": ["email", "name"]}
//! ```
//!
//! Without `$personalFields` (or with it empty) the whole data is
//! personal. Written, each personal field's value becomes
//! `{"$encrypted": "<base64>"}` (the whole data likewise); the metadata
//! stays as it was. Read with the subject's key, the values come back as
//! written. Read after the subject was forgotten, each personal field is
//! `null` (the whole data: JSON `null`, or empty bytes for a binary
//! event), and the metadata gains `"$erased": true`.
//!
//! The base64 holds `version 1 | key id (16) | nonce (24) | ciphertext |
//! tag (16)`, sealed with associated data `"factum-shred-v1" | subject |
//! event id | field name`: a value moved to another event, subject or
//! field does not open.

use base64::Engine as _;
use bytes::Bytes;
use factum_core::{Error, Uuid};
use serde_json::{Map, Value};

use crate::key_store::{check_subject, SubjectKey, KEY_ID_LEN};
use crate::seal::{open, seal_into, OVERHEAD};

pub use factum_core::personal::{ENCRYPTED, ERASED, PERSONAL_FIELDS, SUBJECT};

const ENVELOPE_VERSION: u8 = 1;
const AAD_PREFIX: &[u8] = b"factum-shred-v1\0";

/// What an event's metadata says is personal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Personal {
    /// The data subject.
    pub subject: String,
    /// The personal top-level fields; `None`: the whole data.
    pub fields: Option<Vec<String>>,
}

/// A cheap test before any parsing: can this metadata name a subject?
/// (`\u` escapes could spell the key, so they count too.)
pub fn may_name_subject(metadata: &[u8]) -> bool {
    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
    metadata.len() > 10 && (contains(metadata, b"$subject") || contains(metadata, b"\\u"))
}

/// Reads the convention from an event's metadata: `None` when it names no
/// subject (or is not a JSON object); an error when it names one badly.
pub fn personal(metadata: &[u8]) -> Result<Option<Personal>, Error> {
    if !may_name_subject(metadata) {
        return Ok(None);
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(metadata) else {
        return Ok(None);
    };
    let Some(subject) = map.get(SUBJECT) else {
        return Ok(None);
    };
    let Value::String(subject) = subject else {
        return Err(Error::InvalidInput(format!(
            "metadata {SUBJECT} must be a string naming the data subject"
        )));
    };
    check_subject(subject).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let fields = match map.get(PERSONAL_FIELDS) {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.is_empty() => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(Error::InvalidInput(format!(
                        "metadata {PERSONAL_FIELDS} lists top-level data field names (non-empty strings)"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(Error::InvalidInput(format!(
                "metadata {PERSONAL_FIELDS} must be a list of top-level data field names"
            )))
        }
    };
    Ok(Some(Personal {
        subject: subject.clone(),
        fields,
    }))
}

fn aad(subject: &str, event: Uuid, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + subject.len() + 17 + field.len());
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(subject.as_bytes());
    aad.push(0);
    aad.extend_from_slice(event.as_bytes());
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn envelope(key: &SubjectKey, aad: &[u8], plaintext: &[u8]) -> Result<Value, Error> {
    let mut raw = Vec::with_capacity(1 + KEY_ID_LEN + OVERHEAD + plaintext.len());
    raw.push(ENVELOPE_VERSION);
    raw.extend_from_slice(&key.id);
    seal_into(&key.key, aad, plaintext, &mut raw).map_err(Error::from)?;
    let mut map = Map::with_capacity(1);
    map.insert(
        ENCRYPTED.to_owned(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(raw)),
    );
    Ok(Value::Object(map))
}

/// The sealed bytes inside `{"$encrypted": "…"}`, when `value` is one.
fn envelope_bytes(value: &Value) -> Option<Vec<u8>> {
    let Value::Object(map) = value else {
        return None;
    };
    if map.len() != 1 {
        return None;
    }
    let Value::String(text) = map.get(ENCRYPTED)? else {
        return None;
    };
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Encrypts an event's personal parts with its subject's key.
pub fn encrypt(
    personal: &Personal,
    event: Uuid,
    data: &[u8],
    key: &SubjectKey,
) -> Result<Bytes, Error> {
    let value = match &personal.fields {
        None => envelope(key, &aad(&personal.subject, event, ""), data)?,
        Some(fields) => {
            let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(data) else {
                return Err(Error::InvalidInput(format!(
                    "event {event} names {PERSONAL_FIELDS}, so its data must be a JSON object"
                )));
            };
            for field in fields {
                if let Some(value) = map.get_mut(field) {
                    let plain = serde_json::to_vec(value).expect("a JSON value serializes");
                    *value = envelope(key, &aad(&personal.subject, event, field), &plain)?;
                }
            }
            Value::Object(map)
        }
    };
    Ok(Bytes::from(
        serde_json::to_vec(&value).expect("a JSON value serializes"),
    ))
}

/// An event's data as a reader sees it.
#[derive(Debug, PartialEq)]
pub enum Revealed {
    /// Nothing was encrypted: the data as stored.
    Unchanged,
    /// Decrypted.
    Data(Bytes),
    /// The subject's key is gone: the personal parts are erased.
    Erased(Bytes),
}

/// Opens one envelope: `Ok(None)` when the key that sealed it is gone.
fn reveal_one(
    raw: &[u8],
    key: Option<&SubjectKey>,
    aad: &[u8],
    event: Uuid,
) -> Result<Option<Vec<u8>>, Error> {
    let damaged = |why: &str| Error::Corrupt {
        file: std::path::PathBuf::from(format!("event {event}")),
        offset: 0,
        detail: format!("an encrypted personal field {why}"),
    };
    if raw.len() < 1 + KEY_ID_LEN + OVERHEAD || raw[0] != ENVELOPE_VERSION {
        return Err(damaged("has an unknown layout"));
    }
    let Some(key) = key.filter(|k| k.id[..] == raw[1..1 + KEY_ID_LEN]) else {
        return Ok(None);
    };
    open(&key.key, aad, &raw[1 + KEY_ID_LEN..])
        .map(Some)
        .ok_or_else(|| damaged("does not open under its subject's key (damaged or moved)"))
}

/// Decrypts an event's personal parts with `key` (`None`: the subject has
/// no key, it was forgotten).
pub fn decrypt(
    personal: &Personal,
    event: Uuid,
    data: &[u8],
    binary: bool,
    key: Option<&SubjectKey>,
) -> Result<Revealed, Error> {
    let Ok(mut value) = serde_json::from_slice::<Value>(data) else {
        return Ok(Revealed::Unchanged);
    };
    match &personal.fields {
        None => {
            let Some(raw) = envelope_bytes(&value) else {
                return Ok(Revealed::Unchanged);
            };
            Ok(
                match reveal_one(&raw, key, &aad(&personal.subject, event, ""), event)? {
                    Some(plain) => Revealed::Data(Bytes::from(plain)),
                    None if binary => Revealed::Erased(Bytes::new()),
                    None => Revealed::Erased(Bytes::from_static(b"null")),
                },
            )
        }
        Some(fields) => {
            let Value::Object(map) = &mut value else {
                return Ok(Revealed::Unchanged);
            };
            let (mut opened, mut erased) = (false, false);
            for field in fields {
                let Some(slot) = map.get_mut(field) else {
                    continue;
                };
                let Some(raw) = envelope_bytes(slot) else {
                    continue;
                };
                match reveal_one(&raw, key, &aad(&personal.subject, event, field), event)? {
                    Some(plain) => {
                        *slot = serde_json::from_slice(&plain).map_err(|e| Error::Corrupt {
                            file: std::path::PathBuf::from(format!("event {event}")),
                            offset: 0,
                            detail: format!("decrypted field {field} is not JSON: {e}"),
                        })?;
                        opened = true;
                    }
                    None => {
                        *slot = Value::Null;
                        erased = true;
                    }
                }
            }
            if !opened && !erased {
                return Ok(Revealed::Unchanged);
            }
            let bytes = Bytes::from(serde_json::to_vec(&value).expect("a JSON value serializes"));
            Ok(if erased {
                Revealed::Erased(bytes)
            } else {
                Revealed::Data(bytes)
            })
        }
    }
}

/// The metadata of an erased event: `"$erased": true` added.
pub fn mark_erased(metadata: &[u8]) -> Bytes {
    match serde_json::from_slice::<Value>(metadata) {
        Ok(Value::Object(mut map)) => {
            map.insert(ERASED.to_owned(), Value::Bool(true));
            Bytes::from(serde_json::to_vec(&Value::Object(map)).expect("a JSON value serializes"))
        }
        _ => Bytes::copy_from_slice(metadata),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn personal_of(meta: &str) -> Personal {
        personal(meta.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn the_convention_is_read_from_metadata() {
        assert_eq!(personal(b"{}").unwrap(), None);
        assert_eq!(personal(b"not json at all").unwrap(), None);
        assert_eq!(
            personal_of(r#"{"$subject":"c-1","$personalFields":["email"]}"#),
            Personal {
                subject: "c-1".into(),
                fields: Some(vec!["email".into()])
            }
        );
        assert_eq!(personal_of(r#"{"\u0024subject":"c-1"}"#).fields, None);
        assert!(personal(br#"{"$subject":42}"#).is_err());
        assert!(personal(br#"{"$subject":""}"#).is_err());
        assert!(personal(br#"{"$subject":"a","$personalFields":"email"}"#).is_err());
    }

    #[test]
    fn fields_round_trip_and_erase() {
        let key = SubjectKey::random().unwrap();
        let p = personal_of(r#"{"$subject":"c-1","$personalFields":["email","age"]}"#);
        let id = Uuid::new_v4();
        let data = br#"{"email":"zed@example.com","age":41,"plan":"gold"}"#;
        let sealed = encrypt(&p, id, data, &key).unwrap();
        let text = std::str::from_utf8(&sealed).unwrap();
        assert!(!text.contains("zed@example.com") && text.contains("gold"));
        let Revealed::Data(back) = decrypt(&p, id, &sealed, false, Some(&key)).unwrap() else {
            panic!("decrypts")
        };
        let back: Value = serde_json::from_slice(&back).unwrap();
        assert_eq!(back, serde_json::from_slice::<Value>(data).unwrap());
        let Revealed::Erased(gone) = decrypt(&p, id, &sealed, false, None).unwrap() else {
            panic!("erased")
        };
        let gone: Value = serde_json::from_slice(&gone).unwrap();
        assert_eq!(
            gone,
            serde_json::json!({"email": null, "age": null, "plan": "gold"})
        );
        // A later key of the same subject does not open the old data.
        let later = SubjectKey::random().unwrap();
        assert!(matches!(
            decrypt(&p, id, &sealed, false, Some(&later)).unwrap(),
            Revealed::Erased(_)
        ));
        // Moved to another event: refused, not silently erased.
        assert!(decrypt(&p, Uuid::new_v4(), &sealed, false, Some(&key)).is_err());
    }

    #[test]
    fn whole_data_round_trips_binary_too() {
        let key = SubjectKey::random().unwrap();
        let p = personal_of(r#"{"$subject":"c-1"}"#);
        let id = Uuid::new_v4();
        let sealed = encrypt(&p, id, b"\x00\x01raw", &key).unwrap();
        assert_eq!(
            decrypt(&p, id, &sealed, true, Some(&key)).unwrap(),
            Revealed::Data(Bytes::from_static(b"\x00\x01raw"))
        );
        assert_eq!(
            decrypt(&p, id, &sealed, true, None).unwrap(),
            Revealed::Erased(Bytes::new())
        );
        let marked: Value = serde_json::from_slice(&mark_erased(br#"{"$subject":"c-1"}"#)).unwrap();
        assert_eq!(
            marked,
            serde_json::json!({"$subject": "c-1", "$erased": true})
        );
    }
}
