//! What a SIGHUP changes and what needs a restart. Every key not listed in [`RESTART_KEYS`]
//! applies to the next handshake, event or call after a reload; the listed ones were built
//! into the listener, the Redis connections, the engine, the namespaces or the Frappe client
//! at start, and keep their running value until the next one. The README's account of
//! reloading is checked against this list (see the tests).

use crate::config::{Config, Listen};

/// A key, or a family of keys, whose change needs a restart.
pub struct RestartKey {
    /// As the README and the log name it (`realtime_recovery_*` for a family).
    pub name: &'static str,
    /// Whether the reloaded configuration (first) changes it from the running one.
    changed: fn(&Config, &Config) -> bool,
    /// Put the running value back into the reloaded configuration.
    keep: fn(&mut Config, &Config),
}

/// Every key that needs a restart, and why in a word: what was built with it at start.
pub const RESTART_KEYS: [RestartKey; 16] = [
    // The listener.
    RestartKey {
        name: "socketio_port",
        changed: |new, old| matches!((&new.listen, &old.listen), (Listen::Port(a), Listen::Port(b)) if a != b),
        keep: |new, old| new.listen = old.listen.clone(),
    },
    RestartKey {
        name: "socketio_uds",
        changed: |new, old| {
            new.listen != old.listen
                && !matches!(
                    (&new.listen, &old.listen),
                    (Listen::Port(_), Listen::Port(_))
                )
        },
        keep: |new, old| new.listen = old.listen.clone(),
    },
    // The subscriber and the Redis clients (Frappe 15 on, then 13 and 14's name for it).
    RestartKey {
        name: "redis_queue",
        changed: |new, old| {
            new.redis_queue != old.redis_queue && old.frappe_version.has_site_namespaces()
        },
        keep: |new, old| new.redis_queue = old.redis_queue.clone(),
    },
    RestartKey {
        name: "redis_socketio",
        changed: |new, old| {
            new.redis_queue != old.redis_queue && !old.frappe_version.has_site_namespaces()
        },
        keep: |new, old| new.redis_queue = old.redis_queue.clone(),
    },
    // The subscriber is started with these.
    RestartKey {
        name: "redis_queue_sentinel_*",
        changed: |new, old| new.redis_sentinel != old.redis_sentinel,
        keep: |new, old| new.redis_sentinel = old.redis_sentinel.clone(),
    },
    RestartKey {
        name: "redis_queue_master_*",
        changed: |new, old| new.redis_sentinel != old.redis_sentinel,
        keep: |new, old| new.redis_sentinel = old.redis_sentinel.clone(),
    },
    // Frappe 13/14 and 15+ lay out namespaces differently; the registry set them up at start.
    RestartKey {
        name: "realtime_frappe_version",
        changed: |new, old| {
            new.frappe_version.has_site_namespaces() != old.frappe_version.has_site_namespaces()
        },
        keep: |new, old| new.frappe_version = old.frappe_version,
    },
    RestartKey {
        name: "realtime_reconnect_window",
        changed: |new, old| new.reconnect_window != old.reconnect_window,
        keep: |new, old| new.reconnect_window = old.reconnect_window,
    },
    // The engine bounds every session's queue and stall with these from the start.
    RestartKey {
        name: "realtime_slow_client_timeout",
        changed: |new, old| new.slow_client_timeout != old.slow_client_timeout,
        keep: |new, old| new.slow_client_timeout = old.slow_client_timeout,
    },
    RestartKey {
        name: "realtime_slow_client_max_bytes",
        changed: |new, old| new.slow_client_max_bytes != old.slow_client_max_bytes,
        keep: |new, old| new.slow_client_max_bytes = old.slow_client_max_bytes,
    },
    // Every namespace's recovery store is made with these at start.
    RestartKey {
        name: "realtime_recovery_*",
        changed: |new, old| new.recovery != old.recovery,
        keep: |new, old| new.recovery = old.recovery.clone(),
    },
    RestartKey {
        name: "realtime_recovery_store",
        changed: |new, old| new.recovery_store != old.recovery_store,
        keep: |new, old| new.recovery_store = old.recovery_store,
    },
    // Sharing starts with the process: its heartbeat, and every socket's presence.
    RestartKey {
        name: "realtime_shared_state",
        changed: |new, old| new.shared_state != old.shared_state,
        keep: |new, old| new.shared_state = old.shared_state,
    },
    RestartKey {
        name: "realtime_last_state_*",
        changed: |new, old| new.last_state != old.last_state,
        keep: |new, old| new.last_state = old.last_state.clone(),
    },
    // The Frappe client lives for the process: its bound on calls under way and its
    // answer cache are made once, so a reload never lets twice the calls through or
    // forgets what it knows.
    RestartKey {
        name: "realtime_callback_concurrency",
        changed: |new, old| new.callback_concurrency != old.callback_concurrency,
        keep: |new, old| new.callback_concurrency = old.callback_concurrency,
    },
    RestartKey {
        name: "realtime_user_info_cache_seconds",
        changed: |new, old| new.user_info_cache_ttl != old.user_info_cache_ttl,
        keep: |new, old| new.user_info_cache_ttl = old.user_info_cache_ttl,
    },
];

/// Whether a change to `key` needs a restart (it is in [`RESTART_KEYS`], or in a family of
/// them such as `realtime_recovery_*`).
pub fn needs_restart(key: &str) -> bool {
    RESTART_KEYS
        .iter()
        .any(|listed| match listed.name.strip_suffix('*') {
            Some(family) => key.starts_with(family),
            None => key == listed.name,
        })
}

/// Give `reloaded` the running value of every key that needs a restart, and name the ones
/// it changed.
pub fn keep_restart_values(reloaded: &mut Config, running: &Config) -> Vec<&'static str> {
    let mut needs_restart = Vec::new();
    for key in &RESTART_KEYS {
        if (key.changed)(reloaded, running) {
            needs_restart.push(key.name);
            (key.keep)(reloaded, running);
        }
    }
    needs_restart
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's paragraph on SIGHUP, from its first line to the blank line after it.
    fn readme_on_reload() -> &'static str {
        let readme = include_str!("../README.md");
        let start = readme
            .find("`kill -HUP <pid>`")
            .expect("the README says what SIGHUP does");
        let end = readme[start..]
            .find("\n\n")
            .map_or(readme.len(), |end| start + end);
        &readme[start..end]
    }

    /// Reloadable in part: between 15 and 16 or 13 and 14, not across 14 and 15.
    const PARTLY_RELOADABLE: [&str; 1] = ["realtime_frappe_version"];

    /// The backquoted names in `text` that are configuration keys.
    fn keys_in(text: &str) -> Vec<&str> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter(|name| {
                ["realtime_", "socketio_", "redis_"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
            })
            .collect()
    }

    #[test]
    fn families_of_keys_need_a_restart_as_a_whole() {
        assert!(needs_restart("realtime_recovery_max_events"));
        assert!(needs_restart("realtime_recovery_store"));
        assert!(needs_restart("socketio_port"));
        assert!(!needs_restart("realtime_callback_timeout"));
        assert!(!needs_restart("allow_cors"));
    }

    #[test]
    fn the_readme_says_exactly_which_keys_need_a_restart() {
        let paragraph = readme_on_reload();
        let (reloadable, restart) = paragraph
            .split_once("keep their running value until a restart")
            .expect("the paragraph names the reloadable keys, then the others");
        let listed = |name: &str| RESTART_KEYS.iter().any(|key| key.name == name);
        for key in &RESTART_KEYS {
            assert!(
                keys_in(restart).contains(&key.name),
                "the README does not say `{}` needs a restart",
                key.name
            );
        }
        for name in keys_in(restart) {
            assert!(
                listed(name),
                "the README says `{name}` needs a restart; RESTART_KEYS does not"
            );
        }
        for name in keys_in(reloadable) {
            assert!(
                !listed(name) || PARTLY_RELOADABLE.contains(&name),
                "the README calls `{name}` reloadable; RESTART_KEYS lists it"
            );
        }
    }
}
