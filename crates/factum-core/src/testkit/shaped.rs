//! Events shaped like the seeds' (issue 18's compression figures): JSON
//! order and account events of ~300–500 bytes with correlation and
//! causation metadata, deterministic for a given index so a test and the
//! bench see the same bytes. Ids are random-looking (UUIDs, amounts), as
//! real ones are: a compression ratio measured on them is not flattered by
//! repetition that real data lacks.

use serde_json::json;

use crate::{EventData, StreamName, Uuid};

/// xorshift64*: deterministic, not for secrets.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn uuid(a: u64, b: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&mix(a).to_le_bytes());
    bytes[8..].copy_from_slice(&mix(b ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

const SKUS: [&str; 8] = [
    "SKU-RED-MUG",
    "SKU-BLUE-TEE",
    "SKU-GREEN-CAP",
    "SKU-BOOK-ES",
    "SKU-USB-C-CABLE",
    "SKU-DESK-LAMP",
    "SKU-NOTEBOOK-A5",
    "SKU-COFFEE-1KG",
];
const CITIES: [&str; 6] = ["Lisbon", "Berlin", "Austin", "Osaka", "Lyon", "Porto"];

/// The `i`-th event: its stream (`order-<n>` or `account-<n>`, about ten
/// events a stream) and the event.
pub fn seed_shaped(i: u64) -> (StreamName, EventData) {
    let r = mix(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let entity = i / 10;
    let correlation = uuid(entity, 1);
    let causation = uuid(i, 2);
    let metadata = json!({
        "$correlationId": correlation,
        "$causationId": causation,
        "userId": format!("user-{}", r % 5000),
        "source": if r & 1 == 0 { "web" } else { "mobile-app" },
        "schemaVersion": 2,
        "traceId": format!("{:016x}", mix(r)),
    });
    let cents = |k: u64| (mix(r ^ k) % 20_000) as f64 / 100.0;
    let (stream, event_type, data) = if i % 3 != 2 {
        let order = uuid(entity, 3);
        let items: Vec<_> = (0..1 + r % 3)
            .map(|k| {
                json!({
                    "sku": SKUS[(mix(r + k) % SKUS.len() as u64) as usize],
                    "quantity": 1 + mix(r + k) % 4,
                    "unitPrice": cents(k),
                })
            })
            .collect();
        let (event_type, data) = match i % 10 {
            0 => (
                "OrderPlaced",
                json!({
                    "orderId": order,
                    "customerId": format!("customer-{}", r % 100_000),
                    "items": items,
                    "currency": "EUR",
                    "total": cents(9),
                    "shippingAddress": {
                        "street": format!("{} Rua das Flores", r % 300),
                        "city": CITIES[(r % CITIES.len() as u64) as usize],
                        "postalCode": format!("{:05}", r % 100_000),
                        "country": "PT",
                    },
                    "placedAt": format!("2026-11-{:02}T{:02}:{:02}:{:02}Z", 1 + r % 28, r % 24, r % 60, (r >> 8) % 60),
                }),
            ),
            1 | 4 => (
                "OrderItemAdded",
                json!({"orderId": order, "item": items[0], "addedBy": format!("user-{}", r % 5000)}),
            ),
            3 => (
                "PaymentCaptured",
                json!({"orderId": order, "paymentId": uuid(i, 4), "amount": cents(5), "currency": "EUR", "method": "card", "cardLast4": format!("{:04}", r % 10_000)}),
            ),
            6 => (
                "OrderShipped",
                json!({"orderId": order, "carrier": "DHL", "trackingNumber": format!("JD{:018}", mix(r) % 1_000_000_000_000_000_000), "warehouse": CITIES[(r % 6) as usize]}),
            ),
            _ => (
                "OrderStatusChanged",
                json!({"orderId": order, "from": "pending", "to": "confirmed", "reason": "payment received", "changedBy": format!("user-{}", r % 5000)}),
            ),
        };
        (format!("order-{entity}"), event_type, data)
    } else {
        let account = uuid(entity, 5);
        let data = json!({
            "accountId": account,
            "transactionId": uuid(i, 6),
            "amount": cents(7),
            "balance": cents(8) * 10.0,
            "currency": "EUR",
            "counterparty": {"iban": format!("PT50{:021}", mix(r) % 1_000_000_000_000_000_000), "name": format!("Merchant {}", r % 800)},
            "description": "card payment",
            "bookedAt": format!("2026-11-{:02}T{:02}:{:02}:00Z", 1 + r % 28, r % 24, r % 60),
        });
        let t = if r.is_multiple_of(4) {
            "AccountCredited"
        } else {
            "AccountDebited"
        };
        (format!("account-{entity}"), t, data)
    };
    let stream = StreamName::new(stream).expect("a valid stream name");
    let event = EventData::json(event_type, &data)
        .expect("JSON")
        .with_metadata(serde_json::to_vec(&metadata).expect("JSON"));
    (stream, event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_deterministic_and_seed_sized() {
        let mut total = 0;
        for i in 0..1000 {
            let (s, e) = seed_shaped(i);
            let (s2, e2) = seed_shaped(i);
            assert_eq!((s, &e.data, &e.metadata), (s2, &e2.data, &e2.metadata));
            total += e.data.len() + e.metadata.len() + e.event_type.len();
        }
        let mean = total / 1000;
        assert!((300..=500).contains(&mean), "mean event size {mean}");
    }
}
