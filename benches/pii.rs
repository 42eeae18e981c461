//! Cost of the PII transform (parse, apply, serialize) on synthetic sandbox responses: one
//! Orders v0 `getOrder`, one Orders 2026 `getOrder`, and 100-order `getOrders` / `searchOrders`
//! responses, for three roles: every category passed, every category dropped, and a mixed role
//! (mask, pseudonymize, encrypt). Target: under 20 µs per order.

#[path = "../fixtures/pii_fixtures.rs"]
mod pii_fixtures;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spgate::crypto::DataKey;
use spgate::pii::{
    apply_bytes, order_ids, parse, Action, Category, Keys, Policy, PseudonymKey, Role,
};

fn roles() -> Vec<(&'static str, Role)> {
    let every = |a: Action| Role::new(Category::ALL.map(|c| (c, a)));
    let mixed = Role::new([
        (Category::Name, Action::Mask),
        (Category::Email, Action::Pseudonymize),
        (Category::Phone, Action::Mask),
        (Category::Address, Action::Encrypt),
        (Category::PostalCode, Action::Mask),
        (Category::CoarseLocation, Action::Pass),
        (Category::Company, Action::Pseudonymize),
        (Category::TaxId, Action::Drop),
        (Category::GiftMessage, Action::Encrypt),
        (Category::CustomizationUrl, Action::Mask),
        (Category::DeliveryInstructions, Action::Encrypt),
    ]);
    vec![
        ("pass", every(Action::Pass)),
        ("drop", every(Action::Drop)),
        ("mixed", mixed),
        ("encrypt", every(Action::Encrypt)),
    ]
}

fn transform(c: &mut Criterion) {
    let fixtures = pii_fixtures::sandbox_fixtures();
    let v0_one = pii_fixtures::first(&fixtures, "ordersV0.getOrder");
    let v2026_one = pii_fixtures::first(&fixtures, "orders_2026-01-01.getOrder");
    // (name, operation, path parameters, body, orders in it)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u64);
    let cases: Vec<Case<'_>> = vec![
        (
            "v0 getOrder",
            v0_one.op,
            v0_one.params(),
            v0_one.body.clone(),
            1,
        ),
        (
            "2026 getOrder",
            v2026_one.op,
            v2026_one.params(),
            v2026_one.body.clone(),
            1,
        ),
        (
            "v0 getOrders x100",
            "ordersV0.getOrders",
            vec![],
            pii_fixtures::v0_orders_100(&fixtures),
            100,
        ),
        (
            "2026 searchOrders x100",
            "orders_2026-01-01.searchOrders",
            vec![],
            pii_fixtures::v2026_orders_100(&fixtures),
            100,
        ),
    ];
    let pseudonym = PseudonymKey::from_bytes(&[7; 32]);
    let policy = Policy::default();
    let mut group = c.benchmark_group("pii transform");
    for (name, op, params, body, orders) in &cases {
        eprintln!("{name}: {} bytes", body.len());
        let ids = order_ids(op, &parse(body, &policy).expect("JSON"), params);
        assert_eq!(ids.len() as u64, *orders, "{name}");
        let data_keys: Vec<(String, DataKey)> = ids
            .into_iter()
            .map(|id| (id, DataKey::generate().expect("a data key")))
            .collect();
        let keys = Keys {
            pseudonym: &pseudonym,
            orders: &data_keys,
        };
        group.throughput(Throughput::Elements(*orders));
        // What serde_json alone costs: parse and serialize, no policy.
        group.bench_function(format!("{name} / parse+serialize only"), |b| {
            b.iter(|| {
                let value = parse(black_box(body), &policy).expect("JSON");
                spgate::pii::serialize(&value).expect("serialized")
            })
        });
        for (role_name, role) in roles() {
            group.bench_function(format!("{name} / {role_name}"), |b| {
                b.iter(|| {
                    apply_bytes(op, &role, black_box(body), params, &keys, &policy)
                        .expect("transformed")
                })
            });
        }
    }
    group.finish();
}

/// The building blocks: one field envelope, one pseudonym, one mask.
fn per_field(c: &mut Criterion) {
    let key = DataKey::generate().expect("a data key");
    let pseudonym = PseudonymKey::from_bytes(&[7; 32]);
    let mut group = c.benchmark_group("pii field");
    group.bench_function("encrypt (DataKey::seal_field)", |b| {
        b.iter(|| key.seal_field("902-1234567-1234567", black_box("123 Example Street")))
    });
    group.bench_function("pseudonymize", |b| {
        b.iter(|| pseudonym.pseudonymize(Category::Email, black_box("jane@example.invalid")))
    });
    group.bench_function("mask", |b| {
        b.iter(|| spgate::pii::mask::mask(Category::Name, black_box("Jane Example")))
    });
    group.bench_function("safety net scan", |b| {
        b.iter(|| spgate::pii::net::scan(black_box("2024-01-02T03:04:05Z")))
    });
    group.finish();
}

criterion_group!(benches, transform, per_field);
criterion_main!(benches);
