//! The bench's sites: which exist and what each allows (protocol §3.1). A site exists when
//! `sites/<site>/site_config.json` exists. [`crate::site_registry`] keeps the [`SiteTable`]
//! current and serves each site's namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{PoisonError, RwLock};

use serde_json::Value;

use crate::cors::AllowCors;

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

    pub fn replace(&self, sites: BTreeMap<String, SiteSettings>) {
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
pub fn read_settings(sites_dir: &Path, site: &str) -> (SiteSettings, Option<String>) {
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
}
