//! The bench's sites: which exist, what each allows, and one Socket.IO namespace each from
//! Frappe 15 on (protocol §3.1).
//!
//! A site exists when `sites/<site>/site_config.json` exists. Each site gets a namespace
//! registered here as the site appears and removed as it goes; a CONNECT to any other name
//! gets the layer's own `Invalid namespace`, allocating nothing. The root namespace `/`,
//! where Frappe 13 and 14 and non-browser clients connect, is registered once by the server;
//! the [`SiteTable`] tells its handshakes which sites exist.
//!
//! `sites/` and each site folder are watched (inotify on Linux) so sites created or dropped
//! later, and edits to a site's `allow_cors`, are picked up without a restart; a slow periodic
//! rescan covers missed events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::client::Cause;
use crate::cors::AllowCors;
use crate::handlers::{self, Frappe};
use crate::socketio::Io;
use crate::{audience, metrics};

const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// The names of the sites in `sites_dir`, sorted. A missing folder has no sites; any other
/// failure to read it (out of file descriptors, permissions) is an error, so that a passing
/// fault never reads as "every site was removed".
pub fn scan(sites_dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let entries = match std::fs::read_dir(sites_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            is_site_name(name) && sites_dir.join(name).join("site_config.json").is_file()
        })
        .collect())
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

/// What a handshake needs to know of a site, from its `site_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteSettings {
    /// The site's own `allow_cors`; [`AllowCors::Unset`] falls back to the common one.
    pub allow_cors: AllowCors,
}

/// The sites served right now. The registry keeps it current; handshakes read it.
#[derive(Debug, Default)]
pub struct SiteTable(RwLock<BTreeMap<String, SiteSettings>>);

impl SiteTable {
    /// The settings of `site`, if the bench has it.
    pub fn get(&self, site: &str) -> Option<SiteSettings> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(site)
            .cloned()
    }

    pub fn contains(&self, site: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(site)
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn names(&self) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn replace(&self, sites: BTreeMap<String, SiteSettings>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = sites;
    }
}

impl FromIterator<(String, SiteSettings)> for SiteTable {
    fn from_iter<I: IntoIterator<Item = (String, SiteSettings)>>(sites: I) -> Self {
        Self(RwLock::new(sites.into_iter().collect()))
    }
}

/// Read what a handshake needs from `sites/<site>/site_config.json`. A file that cannot be
/// read or parsed leaves the site served with no `allow_cors` (Frappe's own web server would
/// fail on it); the reason is returned for the log.
fn read_settings(sites_dir: &Path, site: &str) -> (SiteSettings, Option<String>) {
    let path = sites_dir.join(site).join("site_config.json");
    let parsed = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string()))
        .and_then(|config| match config.get("allow_cors") {
            None => Ok(AllowCors::Unset),
            Some(value) => AllowCors::from_value(value).map_err(|e| format!("allow_cors {e}")),
        });
    match parsed {
        Ok(allow_cors) => (SiteSettings { allow_cors }, None),
        Err(problem) => (
            SiteSettings::default(),
            Some(format!("{}: {problem}", path.display())),
        ),
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
        let on_disk = match scan(&self.sites_dir) {
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
                handlers::disconnect_for(&socket, Cause::SiteRemoved);
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
                let (settings, problem) = read_settings(&self.sites_dir, site);
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
    fn a_site_is_a_folder_with_site_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, with_config) in [("a.local", true), ("assets", false), (".hidden", true)] {
            std::fs::create_dir(dir.path().join(name)).expect("mkdir");
            if with_config {
                std::fs::write(dir.path().join(name).join("site_config.json"), "{}").expect("w");
            }
        }
        std::fs::write(dir.path().join("common_site_config.json"), "{}").expect("w");
        assert_eq!(
            scan(dir.path()).expect("readable"),
            BTreeSet::from(["a.local".to_owned()])
        );
        assert!(
            scan(&dir.path().join("missing"))
                .expect("missing is empty")
                .is_empty()
        );
        let not_a_folder = dir.path().join("common_site_config.json");
        assert!(
            scan(&not_a_folder).is_err(),
            "an unreadable sites/ is an error, not no sites"
        );
    }

    #[test]
    fn a_site_config_gives_its_allow_cors_and_a_bad_one_gives_none_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |site: &str, text: &str| {
            std::fs::create_dir_all(dir.path().join(site)).expect("mkdir");
            std::fs::write(dir.path().join(site).join("site_config.json"), text).expect("w");
        };
        write(
            "a.local",
            r#"{"db_name": "x", "allow_cors": "https://portal.example"}"#,
        );
        write("b.local", "{not json");
        write("c.local", r#"{"allow_cors": 7}"#);
        let (a, problem) = read_settings(dir.path(), "a.local");
        assert!(a.allow_cors.allows("https://portal.example") && problem.is_none());
        let (b, problem) = read_settings(dir.path(), "b.local");
        assert_eq!(b, SiteSettings::default());
        assert!(problem.is_some_and(|p| p.contains("site_config.json")));
        let (c, problem) = read_settings(dir.path(), "c.local");
        assert_eq!(c, SiteSettings::default());
        assert!(problem.is_some_and(|p| p.contains("allow_cors")));
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
