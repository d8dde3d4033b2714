//! Keeps the bench's sites and the server's namespaces equal to the sites on disk: from
//! Frappe 15 on, each site gets a namespace registered as the site appears and removed as it
//! goes (protocol §3.1); a CONNECT to any other name gets the layer's own `Invalid namespace`,
//! allocating nothing. The root namespace `/`, where Frappe 13 and 14 and non-browser clients
//! connect, is registered once by the server; the [`SiteTable`] tells its handshakes which
//! sites exist.
//!
//! `sites/` and each site folder are watched (inotify on Linux) so sites created or dropped
//! later, and edits to a site's `allow_cors`, are picked up without a restart; a slow periodic
//! rescan covers missed events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::client;
use crate::disconnect::DisconnectCause;
use crate::handlers::Frappe;
use crate::sites::{self, SiteSettings, SiteTable};
use crate::socketio::Io;
use crate::{audience, metrics};

const RESCAN_EVERY: Duration = Duration::from_secs(5);

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

/// Keeps the [`SiteTable`], and the namespaces of `io`, equal to the sites on disk.
pub struct SiteRegistry {
    io: Io,
    /// The handler of every site's namespace.
    frappe: Arc<Frappe>,
    sites_dir: PathBuf,
    table: Arc<SiteTable>,
    /// Frappe 15 on: a namespace per site. Before, every site shares `/`.
    site_namespaces: bool,
    served: BTreeSet<String>,
    /// The last problem reported for each site's `site_config.json`, to report it once.
    problems: BTreeMap<String, String>,
}

impl SiteRegistry {
    pub fn new(
        io: Io,
        frappe: Arc<Frappe>,
        sites_dir: PathBuf,
        table: Arc<SiteTable>,
        site_namespaces: bool,
    ) -> Self {
        Self {
            io,
            frappe,
            sites_dir,
            table,
            site_namespaces,
            served: BTreeSet::new(),
            problems: BTreeMap::new(),
        }
    }

    /// Register namespaces for new sites, drop those of vanished ones, and re-read every
    /// site's settings.
    pub async fn sync(&mut self) {
        let on_disk = match sites::scan(&self.sites_dir) {
            Ok(on_disk) => on_disk,
            Err(e) => {
                tracing::warn!(dir = %self.sites_dir.display(), error = %e,
                    "cannot read sites/; keeping the sites served until it can be read");
                return;
            }
        };
        let settings = self.read_all_settings(&on_disk);
        self.table.replace(settings);
        for site in on_disk.difference(&self.served) {
            if self.site_namespaces
                && let Err(e) = self
                    .io
                    .add_namespace(&format!("/{site}"), self.frappe.clone())
            {
                tracing::warn!(%site, error = %e, "the site's namespace was already served");
            }
            tracing::info!(%site, "serving site");
        }
        for site in self.served.difference(&on_disk) {
            // Its sockets in `/` as well as in its own namespace; each client is told.
            for socket in audience::site_sockets(&self.io, site) {
                client::disconnect(&socket, DisconnectCause::SiteRemoved);
            }
            if self.site_namespaces {
                self.io.remove_namespace(&format!("/{site}"));
            }
            metrics::forget_site(site);
            tracing::info!(%site, "site removed; its clients were disconnected");
        }
        self.served = on_disk;
    }

    fn read_all_settings(&mut self, sites: &BTreeSet<String>) -> BTreeMap<String, SiteSettings> {
        self.problems.retain(|site, _| sites.contains(site));
        sites
            .iter()
            .map(|site| {
                let (settings, problem) = sites::read_settings(&self.sites_dir, site);
                match problem {
                    Some(problem) if self.problems.get(site) != Some(&problem) => {
                        tracing::warn!(%site, %problem, "site_config.json not usable; serving the site without its allow_cors");
                        self.problems.insert(site.clone(), problem);
                    }
                    Some(_) => {}
                    None => {
                        self.problems.remove(site);
                    }
                }
                (site.clone(), settings)
            })
            .collect()
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
