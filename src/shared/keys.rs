//! The keys the instances share, under one prefix.

pub const PREFIX: &str = "frappe_realtime:shared:";

/// An instance's `alive` key: it exists while the instance renews it, holding its summary.
pub fn alive_key(instance: &str) -> String {
    format!("{PREFIX}alive:{instance}")
}
