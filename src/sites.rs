//! The bench's sites, one Socket.IO namespace each (spec §3.1).
//!
//! A site exists when `sites/<site>/site_config.json` exists. Each site gets a *static*
//! namespace registered here, instead of socketioxide's dynamic namespaces: those are created
//! before the middleware runs (so refused handshakes to junk names pile up in memory) and
//! two first CONNECTs racing to one new child can orphan a socket (notes §A1). With static
//! namespaces an unknown name gets the library's own `Invalid namespace`, allocating nothing.
//!
//! `sites/` and each site folder are watched (inotify on Linux) so sites created or dropped
//! later are served without a restart; a slow periodic rescan covers missed events.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::handler::ConnectHandler;
use tokio::sync::mpsc;

use crate::revoke::ServerCause;
use crate::{handlers, metrics};

const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// The names of the sites in `sites_dir`, sorted. An unreadable folder reads as no sites.
pub fn scan(sites_dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(sites_dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            is_site_name(name) && sites_dir.join(name).join("site_config.json").is_file()
        })
        .collect()
}

/// Whether a watch event can mean a site appeared or went. Reads are not: the rescan itself
/// opens these folders, so reacting to them would rescan in a loop and burn a core. A file
/// closed after writing is (a `site_config.json` just written).
fn changes_sites(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// A folder name usable as a namespace: not hidden, no path separators.
fn is_site_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
}

/// Keeps the namespaces of `io` equal to the sites on disk.
pub struct SiteRegistry {
    io: SocketIo<LocalAdapter>,
    sites_dir: PathBuf,
    served: BTreeSet<String>,
}

impl SiteRegistry {
    pub fn new(io: SocketIo<LocalAdapter>, sites_dir: PathBuf) -> Self {
        Self {
            io,
            sites_dir,
            served: BTreeSet::new(),
        }
    }

    /// Register namespaces for new sites and drop those of vanished ones.
    pub async fn sync(&mut self) {
        let on_disk = scan(&self.sites_dir);
        for site in on_disk.difference(&self.served) {
            self.io.ns(
                format!("/{site}"),
                handlers::on_connect.with(handlers::authenticate),
            );
            tracing::info!(%site, "serving site");
        }
        for site in self.served.difference(&on_disk) {
            let path = format!("/{site}");
            // Tell the site's clients they were disconnected: `delete_ns` alone closes the
            // sockets on our side only, leaving each client with a dead connection.
            if let Some(namespace) = self.io.of(&path) {
                for socket in namespace.clone().sockets() {
                    socket.extensions.insert(ServerCause("site_removed"));
                }
                if let Err(e) = namespace.disconnect().await {
                    tracing::debug!(%site, error = %e, "some sockets were already gone");
                }
            }
            self.io.delete_ns(path);
            metrics::forget_site(site);
            tracing::info!(%site, "site removed; its clients were disconnected");
        }
        self.served = on_disk;
    }

    pub fn served(&self) -> &BTreeSet<String> {
        &self.served
    }

    /// Re-sync whenever something changes under `sites/`, until the task is dropped.
    pub async fn watch(mut self) {
        let (tx, mut changes) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // A full channel means a rescan is already pending; that one will see this change.
            if event.is_ok_and(|event| changes_sites(&event.kind)) {
                let _ = tx.try_send(());
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch sites/; rescanning every {RESCAN_EVERY:?}");
                None
            }
        };
        let mut watched = BTreeSet::new();
        let mut rescan = tokio::time::interval(RESCAN_EVERY);
        loop {
            if let Some(watcher) = watcher.as_mut() {
                self.update_watches(watcher, &mut watched);
            }
            tokio::select! {
                _ = changes.recv() => {}
                _ = rescan.tick() => {}
            }
            self.sync().await;
        }
    }

    /// Watch `sites/` and every folder in it (not recursively: a site's `site_config.json`
    /// appearing or going is all that matters, and `sites/assets` can be huge).
    fn update_watches(&self, watcher: &mut RecommendedWatcher, watched: &mut BTreeSet<PathBuf>) {
        let mut wanted: BTreeSet<PathBuf> = std::fs::read_dir(&self.sites_dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .map(|entry| entry.path())
            .collect();
        wanted.insert(self.sites_dir.clone());
        for gone in watched.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for new in wanted.difference(watched) {
            if let Err(e) = watcher.watch(new, RecursiveMode::NonRecursive) {
                tracing::debug!(path = %new.display(), error = %e, "cannot watch");
            }
        }
        *watched = wanted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_is_a_folder_with_site_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, with_config) in [("a.local", true), ("assets", false), (".hidden", true)] {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
            if with_config {
                std::fs::write(dir.path().join(name).join("site_config.json"), "{}").expect("w");
            }
        }
        std::fs::write(dir.path().join("common_site_config.json"), "{}").expect("w");
        assert_eq!(scan(dir.path()), BTreeSet::from(["a.local".to_owned()]));
        assert!(scan(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn reading_the_folders_is_not_a_change() {
        use notify::event::{CreateKind, RemoveKind};
        assert!(!changes_sites(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_sites(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes_sites(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_sites(&EventKind::Create(CreateKind::Folder)));
        assert!(changes_sites(&EventKind::Remove(RemoveKind::File)));
    }
}
