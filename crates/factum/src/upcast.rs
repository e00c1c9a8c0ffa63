//! Schema evolution: upcasters (vN → vN+1) and downcasters (vN → vN−1) per
//! event type, chained to reach any version from any other.
//!
//! Stored events are never rewritten. On read, the repository converts each
//! event from the version in its metadata (`$schemaVersion`, 1 when absent)
//! to the version its aggregate's event type declares; projections convert
//! to the newest version the registry knows, or to the version they pin.
//!
//! ```
//! use factum::Upcasters;
//! use serde_json::json;
//!
//! let up = Upcasters::new()
//!     // v1 → v2: deposits gained a currency; old ones were euros.
//!     .add_field("MoneyDeposited", 1, "currency", json!("EUR"))
//!     // v2 → v3: `name` became `owner`.
//!     .rename_field("MoneyDeposited", 2, "name", "owner");
//! let v3 = up.convert("MoneyDeposited", 1, 3, json!({"amount": 5, "name": "ada"})).unwrap();
//! assert_eq!(v3, json!({"amount": 5, "currency": "EUR", "owner": "ada"}));
//! assert_eq!(up.latest_version("MoneyDeposited"), 3);
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::event::CodecError;

type Convert = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// A registry of per-event-type conversions between schema versions.
#[derive(Clone, Default)]
pub struct Upcasters {
    /// (type, from) → converts from `from` to `from + 1`.
    up: HashMap<String, HashMap<u32, Convert>>,
    /// (type, from) → converts from `from` to `from - 1`.
    down: HashMap<String, HashMap<u32, Convert>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut up: Vec<_> = self
            .up
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |v| format!("{t} v{v}→v{}", v + 1)))
            .collect();
        up.sort();
        let mut down: Vec<_> = self
            .down
            .iter()
            .flat_map(|(t, m)| m.keys().map(move |v| format!("{t} v{v}→v{}", v - 1)))
            .collect();
        down.sort();
        f.debug_struct("Upcasters")
            .field("up", &up)
            .field("down", &down)
            .finish()
    }
}

impl Upcasters {
    /// An empty registry: every event is read as stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the conversion of `event_type` from version `from` to
    /// `from + 1`. The function gets the event's JSON data and returns the
    /// new data or a reason it cannot be converted.
    pub fn upcast(
        mut self,
        event_type: impl Into<String>,
        from: u32,
        f: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.up
            .entry(event_type.into())
            .or_default()
            .insert(from, Arc::new(f));
        self
    }

    /// Registers the conversion of `event_type` from version `from` down to
    /// `from - 1`, for consumers pinned to an older version.
    pub fn downcast(
        mut self,
        event_type: impl Into<String>,
        from: u32,
        f: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.down
            .entry(event_type.into())
            .or_default()
            .insert(from, Arc::new(f));
        self
    }

    /// Upcaster `from → from + 1` adding a field with a default, and the
    /// matching downcaster removing it.
    pub fn add_field(
        self,
        event_type: impl Into<String>,
        from: u32,
        field: impl Into<String>,
        default: Value,
    ) -> Self {
        let event_type = event_type.into();
        let field: Arc<str> = Arc::from(field.into());
        let f2 = field.clone();
        self.upcast(event_type.clone(), from, move |mut v| {
            let obj = v
                .as_object_mut()
                .ok_or_else(|| "data is not a JSON object".to_string())?;
            obj.entry(field.to_string()).or_insert(default.clone());
            Ok(v)
        })
        .downcast(event_type, from + 1, move |mut v| {
            let obj = v
                .as_object_mut()
                .ok_or_else(|| "data is not a JSON object".to_string())?;
            obj.remove(&*f2);
            Ok(v)
        })
    }

    /// Upcaster `from → from + 1` renaming a field, and the matching
    /// downcaster renaming it back.
    pub fn rename_field(
        self,
        event_type: impl Into<String>,
        from: u32,
        old: impl Into<String>,
        new: impl Into<String>,
    ) -> Self {
        let event_type = event_type.into();
        let (old, new): (Arc<str>, Arc<str>) = (Arc::from(old.into()), Arc::from(new.into()));
        let (o2, n2) = (old.clone(), new.clone());
        self.upcast(event_type.clone(), from, move |v| rename(v, &old, &new))
            .downcast(event_type, from + 1, move |v| rename(v, &n2, &o2))
    }

    /// The newest version this registry can upcast `event_type` to (1 when
    /// it knows no upcaster for it).
    pub fn latest_version(&self, event_type: &str) -> u32 {
        let Some(steps) = self.up.get(event_type) else {
            return 1;
        };
        let mut v = 1;
        while steps.contains_key(&v) {
            v += 1;
        }
        v.max(steps.keys().max().map_or(1, |m| m + 1))
    }

    /// True when some conversion is registered for `event_type`.
    pub fn knows(&self, event_type: &str) -> bool {
        self.up.contains_key(event_type) || self.down.contains_key(event_type)
    }

    /// True when no conversion is registered at all.
    pub fn is_empty(&self) -> bool {
        self.up.is_empty() && self.down.is_empty()
    }

    /// Converts JSON data of `event_type` from version `from` to `to`, one
    /// step at a time.
    pub fn convert(
        &self,
        event_type: &str,
        from: u32,
        to: u32,
        mut data: Value,
    ) -> Result<Value, CodecError> {
        let (table, direction) = if to >= from {
            (&self.up, "upcast")
        } else {
            (&self.down, "downcast")
        };
        let mut v = from;
        while v != to {
            let next = if to > v { v + 1 } else { v - 1 };
            let step = table
                .get(event_type)
                .and_then(|m| m.get(&v))
                .ok_or_else(|| CodecError::NoPath {
                    direction,
                    event_type: event_type.to_owned(),
                    from,
                    to,
                })?;
            data = step(data).map_err(|reason| CodecError::Convert {
                event_type: event_type.to_owned(),
                from: v,
                to: next,
                reason,
            })?;
            v = next;
        }
        Ok(data)
    }

    /// Converts raw JSON data; borrows it unchanged when `from == to`.
    pub fn convert_bytes<'a>(
        &self,
        event_type: &str,
        from: u32,
        to: u32,
        data: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, CodecError> {
        if from == to {
            return Ok(Cow::Borrowed(data));
        }
        let value: Value = if data.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(data).map_err(|source| CodecError::Decode {
                what: format!("event {event_type} v{from}"),
                source,
            })?
        };
        let out = self.convert(event_type, from, to, value)?;
        serde_json::to_vec(&out)
            .map(Cow::Owned)
            .map_err(|source| CodecError::Encode {
                what: format!("event {event_type} v{to}"),
                source,
            })
    }
}

fn rename(mut v: Value, old: &str, new: &str) -> Result<Value, String> {
    let obj = v
        .as_object_mut()
        .ok_or_else(|| "data is not a JSON object".to_string())?;
    if let Some(x) = obj.remove(old) {
        obj.insert(new.to_owned(), x);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Upcasters {
        Upcasters::new()
            .add_field("MoneyDeposited", 1, "currency", json!("EUR"))
            .rename_field("AccountOpened", 1, "name", "owner")
    }

    #[test]
    fn seed_cases_upcast_and_downcast() {
        let up = registry();
        let v2 = up
            .convert("MoneyDeposited", 1, 2, json!({"amount": 10}))
            .unwrap();
        assert_eq!(v2, json!({"amount": 10, "currency": "EUR"}));
        // An explicit value is never overwritten by the default.
        let kept = up
            .convert(
                "MoneyDeposited",
                1,
                2,
                json!({"amount": 1, "currency": "USD"}),
            )
            .unwrap();
        assert_eq!(kept["currency"], "USD");
        let v1 = up.convert("MoneyDeposited", 2, 1, v2).unwrap();
        assert_eq!(v1, json!({"amount": 10}));
        let owner = up
            .convert("AccountOpened", 1, 2, json!({"name": "ada"}))
            .unwrap();
        assert_eq!(owner, json!({"owner": "ada"}));
        assert_eq!(
            up.convert("AccountOpened", 2, 1, owner).unwrap(),
            json!({"name": "ada"})
        );
    }

    #[test]
    fn chains_and_missing_paths() {
        let up = registry().upcast("MoneyDeposited", 2, |mut v| {
            let amount = v["amount"].as_u64().ok_or("amount is not a number")?;
            v["amount_cents"] = json!(amount * 100);
            Ok(v)
        });
        assert_eq!(up.latest_version("MoneyDeposited"), 3);
        assert_eq!(up.latest_version("Unknown"), 1);
        let v3 = up
            .convert("MoneyDeposited", 1, 3, json!({"amount": 2}))
            .unwrap();
        assert_eq!(v3["amount_cents"], 200);
        assert_eq!(v3["currency"], "EUR");
        assert!(matches!(
            up.convert("MoneyDeposited", 3, 1, v3),
            Err(CodecError::NoPath { .. })
        ));
        assert!(matches!(
            up.convert("MoneyDeposited", 2, 3, json!({"amount": "x"})),
            Err(CodecError::Convert { .. })
        ));
        assert!(matches!(
            up.convert("MoneyDeposited", 1, 2, json!([1])),
            Err(CodecError::Convert { .. })
        ));
        let same = up.convert_bytes("X", 4, 4, b"{}").unwrap();
        assert!(matches!(same, Cow::Borrowed(_)));
        assert!(up.convert_bytes("MoneyDeposited", 1, 2, b"{bad").is_err());
    }
}
