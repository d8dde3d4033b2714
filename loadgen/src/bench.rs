//! A throwaway bench directory laid out as `bench init` + `bench new-site` leave it, holding
//! only what a realtime service reads (protocol §1): `sites/common_site_config.json`, one site, and
//! `apps/frappe/frappe/__init__.py` for the Frappe version. Removed when dropped, unless kept
//! (with the server's, redis-server's and the web stand-in's logs in `logs/`) to read later.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use tempfile::TempDir;

pub struct Bench {
    dir: Option<TempDir>,
    keep: bool,
}

/// What goes into `common_site_config.json`.
pub struct BenchConfig<'a> {
    pub site: &'a str,
    pub redis_url: &'a str,
    pub socketio_port: u16,
    pub webserver_port: u16,
    pub frappe_version: u32,
    /// Keys added as they are (`--site-config`), after the ones above.
    pub extra: &'a [(String, serde_json::Value)],
}

impl Bench {
    pub fn create(config: &BenchConfig<'_>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("loadgen-bench-")
            .tempdir()
            .context("creating the bench directory")?;
        let root = dir.path();
        let write = |relative: &str, contents: String| -> Result<()> {
            let path = root.join(relative);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
        };
        let mut common = json!({
            "redis_queue": config.redis_url,
            "redis_cache": config.redis_url,
            "socketio_port": config.socketio_port,
            "webserver_port": config.webserver_port,
        });
        for (key, value) in config.extra {
            common[key.as_str()] = value.clone();
        }
        write(
            "sites/common_site_config.json",
            serde_json::to_string_pretty(&common).context("serialising the config")?,
        )?;
        write(
            &format!("sites/{}/site_config.json", config.site),
            "{}".into(),
        )?;
        write("sites/apps.txt", "frappe\n".into())?;
        write(
            "apps/frappe/frappe/__init__.py",
            format!("__version__ = \"{}.0.0\"\n", config.frappe_version),
        )?;
        std::fs::create_dir_all(root.join("logs")).context("creating logs/")?;
        Ok(Self {
            dir: Some(dir),
            keep: false,
        })
    }

    pub fn path(&self) -> &Path {
        match &self.dir {
            Some(dir) => dir.path(),
            None => Path::new(""),
        }
    }

    /// Leave the directory in place when dropped (its path is printed then).
    pub fn keep_on_drop(&mut self) {
        self.keep = true;
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && self.keep
        {
            eprintln!("loadgen: bench and logs kept in {}", dir.keep().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_what_a_realtime_service_reads() {
        let bench = Bench::create(&BenchConfig {
            site: "a.local",
            redis_url: "redis://127.0.0.1:1",
            socketio_port: 9001,
            webserver_port: 8001,
            frappe_version: 15,
            extra: &[("realtime_recovery_store".into(), "redis".into())],
        })
        .expect("bench");
        let common: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(bench.path().join("sites/common_site_config.json"))
                .expect("read"),
        )
        .expect("json");
        assert_eq!(common["socketio_port"], 9001);
        assert_eq!(common["redis_queue"], "redis://127.0.0.1:1");
        assert_eq!(common["realtime_recovery_store"], "redis");
        assert!(
            bench
                .path()
                .join("sites/a.local/site_config.json")
                .is_file()
        );
        let init = std::fs::read_to_string(bench.path().join("apps/frappe/frappe/__init__.py"))
            .expect("init");
        assert_eq!(init, "__version__ = \"15.0.0\"\n");
        let path = bench.path().to_path_buf();
        drop(bench);
        assert!(!path.exists());
    }
}
