//! What the property-based fuzzing files (`fuzz_parsers.rs`, `fuzz_layer.rs`) share: the case
//! counts and proptest configuration (docs/fuzzing.md), and strategies for strings and JSON.
//! Included with `#[path]`; each file uses part of it.
#![allow(dead_code, reason = "each fuzzing file uses part of it")]

use frappe_realtime::bridge;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Case counts
// ---------------------------------------------------------------------------------------------

/// Cases per property on a plain `cargo test`. proptest reads `PROPTEST_CASES` only for
/// properties that do not set `cases` themselves, so the override is read here.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

pub fn config(default_cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default_cases),
        // Shrinking a real failure to a minimal input is worth more than speed.
        max_shrink_iters: 10_000,
        // A failure is saved next to the test file that found it (`<file>.proptest-regressions`),
        // to be replayed first on the next run.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Strings and JSON
// ---------------------------------------------------------------------------------------------

pub fn pick(items: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    select(items).prop_map(str::to_owned)
}

/// Event names Socket.IO reserves (protocol §6).
pub const RESERVED: &[&str] = &bridge::RESERVED_EVENTS;

/// Any string: empty, reserved event names, the keys of a publication, plain ASCII, and
/// arbitrary Unicode scalar values (control characters, NUL, astral planes included).
pub fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => pick(RESERVED),
        1 => pick(WORDS),
        2 => "[ -~]{0,16}",
        3 => vec(any::<char>(), 0..16).prop_map(String::from_iter),
    ]
}

/// A JSON number of every shape serde_json keeps apart: i64, u64, finite f64, and -0.0.
pub fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(vec![0i64, 1, -1, i64::MIN, i64::MAX]).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        finite_f64().prop_map(Value::from),
        select(vec![
            0.0f64,
            -0.0,
            0.5,
            1e300,
            -1e-300,
            f64::MAX,
            f64::MIN_POSITIVE
        ])
        .prop_map(Value::from),
    ]
}

/// Any finite f64 (JSON has no NaN or infinity): normal, subnormal and zero, either sign.
pub fn finite_f64() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

pub fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        any_string().prop_map(Value::String),
    ]
}

/// Any JSON value, up to 4 levels deep.
pub fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(any_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Words that matter to a publication, none of them reserved or empty.
pub const WORDS: &[&str] = &[
    "event",
    "room",
    "namespace",
    "message",
    "list_update",
    "doc_update",
    "a.local",
    "doctype:ToDo",
    "all",
    "website",
    "0",
    "false",
    "null",
    " ",
];
