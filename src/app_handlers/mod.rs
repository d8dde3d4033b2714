//! App handlers without JavaScript: what Frappe 16's Node service does with each installed
//! app's `realtime/handlers.js`, written as data (`realtime/handlers.json`) and run here.
//!
//! For every app in `sites/apps.txt` one file is used, the first found of: the operator's
//! `config/realtime/handlers/<app>.json` in the bench, the app's own
//! `apps/<app>/realtime/handlers.json`, and the one built in for the public apps that ship a
//! `handlers.js` (`builtin/`). A file that does not load disables that app's handlers only,
//! with an error naming the file and the line, counted in
//! `frappe_realtime_app_handler_files_rejected_total`; SIGHUP loads them all again.
//!
//! A handler runs for a socket only if its site has the app installed (the `installed_apps`
//! Frappe 16's `get_user_info` returns), as in Node. The events Frappe's own service handles
//! are not an app's to take: a handler for one is skipped with a warning (Node would run both;
//! see the README on `ping`).

mod run;
mod spec;
mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::metrics::counter;

use crate::metrics;
pub use run::Context;
use spec::{Handler, HandlerFile};

/// The handler files shipped for public apps: app name and JSON text.
const BUILTIN: [(&str, &str); 8] = [
    ("helpdesk", include_str!("builtin/helpdesk.json")),
    ("raven", include_str!("builtin/raven.json")),
    ("drive", include_str!("builtin/drive.json")),
    ("suite", include_str!("builtin/suite.json")),
    ("pos_next", include_str!("builtin/pos_next.json")),
    ("quizzly", include_str!("builtin/quizzly.json")),
    ("time_tracker", include_str!("builtin/time_tracker.json")),
    (
        "press_agent_manager",
        include_str!("builtin/press_agent_manager.json"),
    ),
];

/// Every loaded handler, by event name.
#[derive(Debug, Default)]
pub struct AppHandlers {
    by_event: HashMap<String, Vec<Arc<Handler>>>,
}

/// Where a handler file came from, for messages.
#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Builtin(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Builtin(app) => write!(f, "the built-in handlers of {app}"),
        }
    }
}

impl AppHandlers {
    /// Load the handlers of every app of the bench at `bench` (see the module's doc).
    /// `core_events` are Frappe's own, which no app handler may take. A file that does not
    /// load is logged and counted, and its app has no handlers.
    pub fn load(bench: &Path, core_events: &[&str]) -> Self {
        let mut handlers = Self::default();
        for found in find_all(bench, core_events) {
            match found.loaded {
                Ok(loaded) => {
                    tracing::info!(app = found.app, source = %found.source, handlers = loaded.len(),
                        "app handlers loaded");
                    for handler in loaded {
                        handlers
                            .by_event
                            .entry(handler.event.clone())
                            .or_default()
                            .push(Arc::new(handler));
                    }
                }
                Err(problem) => {
                    counter!(metrics::APP_HANDLER_FILES_REJECTED, "app" => found.app.clone())
                        .increment(1);
                    tracing::error!(
                        app = found.app,
                        "{problem}; this app's realtime handlers are off"
                    );
                }
            }
        }
        handlers
    }

    /// What loading would do, app by app, without counting or logging the rejections:
    /// `--check-config`'s report.
    /// Each app's handler file and either how many handlers it has or what is wrong.
    pub fn check(bench: &Path, core_events: &[&str]) -> Vec<(String, Result<usize, String>)> {
        find_all(bench, core_events)
            .into_iter()
            .map(|found| {
                let outcome = found.loaded.map(|loaded| loaded.len());
                (format!("{} ({})", found.app, found.source), outcome)
            })
            .collect()
    }

    /// The handlers of `event` for a site with `installed_apps`, in the order of
    /// `sites/apps.txt`.
    pub fn for_event(&self, event: &str, installed_apps: &[String]) -> Vec<Arc<Handler>> {
        self.by_event
            .get(event)
            .into_iter()
            .flatten()
            .filter(|handler| installed_apps.contains(&handler.app))
            .cloned()
            .collect()
    }
}

/// One app's handler file, loaded or not.
struct Found {
    app: String,
    source: Source,
    /// The handlers, or the problem with the file and line, ready to print.
    loaded: Result<Vec<Handler>, String>,
}

/// Every app of the bench that has a handler file, with its handlers loaded.
fn find_all(bench: &Path, core_events: &[&str]) -> Vec<Found> {
    bench_apps(bench)
        .into_iter()
        .filter_map(|app| {
            let (source, text) = find_file(bench, &app)?;
            let loaded = match text {
                Ok(text) => parse(&app, &text, core_events)
                    .map_err(|e| format!("{source}:{}: {}", e.line, e.message)),
                Err(e) => Err(format!("{source}: cannot be read: {e}")),
            };
            Some(Found {
                app,
                source,
                loaded,
            })
        })
        .collect()
}

/// The apps of the bench, as `sites/apps.txt` lists them; Frappe's own handlers are ours.
fn bench_apps(bench: &Path) -> Vec<String> {
    std::fs::read_to_string(bench.join("sites/apps.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|app| !app.is_empty() && *app != "frappe")
        .map(str::to_owned)
        .collect()
}

/// The file that holds `app`'s handlers (see the module's doc), with its text, or why a file
/// that exists cannot be read; `None` when the app has none.
fn find_file(bench: &Path, app: &str) -> Option<(Source, std::io::Result<String>)> {
    let files = [
        bench.join(format!("config/realtime/handlers/{app}.json")),
        bench.join(format!("apps/{app}/realtime/handlers.json")),
    ];
    for path in files {
        match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            read => return Some((Source::File(path), read)),
        }
    }
    BUILTIN
        .iter()
        .find(|(name, _)| *name == app)
        .map(|(name, text)| (Source::Builtin(name), Ok((*text).to_owned())))
}

/// Why a file was rejected, and the line to look at.
#[derive(Debug, PartialEq, Eq)]
struct LoadError {
    line: usize,
    message: String,
}

/// Parse and compile one file of `app`'s handlers.
fn parse(app: &str, text: &str, core_events: &[&str]) -> Result<Vec<Handler>, LoadError> {
    let file: HandlerFile = serde_json::from_str(text).map_err(|e| LoadError {
        line: e.line(),
        message: e.to_string(),
    })?;
    if file.app != app {
        return Err(LoadError {
            line: line_of(text, &format!("\"{}\"", file.app)),
            message: format!("the file is for app `{}`, found as `{app}`'s", file.app),
        });
    }
    let mut handlers = Vec::new();
    for spec in file.handlers {
        let line = line_of(text, &format!("\"{}\"", spec.event));
        if core_events.contains(&spec.event.as_str()) {
            tracing::warn!(
                app,
                line,
                event = spec.event,
                "Frappe's own event; the app's handler for it is skipped"
            );
            continue;
        }
        let event = spec.event.clone();
        handlers.push(spec.compile(app).map_err(|message| LoadError {
            line,
            message: format!("handler of `{event}`: {message}"),
        })?);
    }
    Ok(handlers)
}

/// The line (from 1) where `needle` first occurs in `text`, or 1.
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map_or(1, |at| text[..at].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORE: [&str; 2] = ["ping", "doc_subscribe"];

    #[test]
    fn every_builtin_file_loads() {
        for (app, text) in BUILTIN {
            let handlers = parse(app, text, &CORE).unwrap_or_else(|e| panic!("{app}: {e:?}"));
            assert!(!handlers.is_empty(), "{app} has handlers");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let text = "{\n \"app\": \"x\",\n \"handlers\": [\n  {\"event\": \"e\", \"join\": \"r:{nope}\"}\n ]\n}";
        let error = parse("x", text, &CORE).expect_err("unknown placeholder");
        assert_eq!(error.line, 4);
        assert!(
            error.message.contains("`{nope}` names no argument"),
            "{}",
            error.message
        );
        let syntax =
            parse("x", "{\n \"app\": \"x\",\n \"handlers\": [,]\n}", &CORE).expect_err("syntax");
        assert_eq!(syntax.line, 3);
        let unknown = "{\"app\": \"x\", \"handlers\": [{\"event\": \"e\", \"jion\": \"r\"}]}";
        assert!(
            parse("x", unknown, &CORE)
                .expect_err("unknown field")
                .message
                .contains("jion")
        );
        let burst =
            r#"{"app": "x", "handlers": [{"event": "e", "queue": {"stream": "s", "burst": 0}}]}"#;
        assert!(
            parse("x", burst, &CORE)
                .expect_err("no burst")
                .message
                .contains("burst")
        );
        let other = parse("y", "{\"app\": \"x\", \"handlers\": []}", &CORE).expect_err("other app");
        assert!(other.message.contains("for app `x`"));
    }

    #[test]
    fn core_events_are_not_an_apps() {
        let text = "{\"app\": \"x\", \"handlers\": [{\"event\": \"ping\"}, {\"event\": \"mine\"}]}";
        let handlers = parse("x", text, &CORE).expect("loads");
        assert_eq!(
            handlers
                .iter()
                .map(|h| h.event.as_str())
                .collect::<Vec<_>>(),
            ["mine"]
        );
    }

    #[test]
    fn files_are_found_operator_first_then_the_app_then_built_in() {
        let bench = tempfile::tempdir().expect("temp dir");
        let root = bench.path();
        std::fs::create_dir_all(root.join("sites")).expect("sites");
        std::fs::write(
            root.join("sites/apps.txt"),
            "frappe\nhelpdesk\nmyapp\nraven\n",
        )
        .expect("apps.txt");
        let write = |relative: &str, text: &str| {
            let path = root.join(relative);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        };
        write(
            "apps/myapp/realtime/handlers.json",
            r#"{"app": "myapp", "handlers": [{"event": "mine", "args": ["x"], "join": "r:{x}"}]}"#,
        );
        write(
            "config/realtime/handlers/raven.json",
            r#"{"app": "raven", "handlers": [{"event": "operator_event"}]}"#,
        );
        let handlers = AppHandlers::load(root, &CORE);
        let apps = ["helpdesk", "myapp", "raven"].map(String::from);
        assert_eq!(handlers.for_event("mine", &apps).len(), 1);
        assert_eq!(
            handlers.for_event("view_ticket", &apps).len(),
            1,
            "built in"
        );
        assert_eq!(handlers.for_event("operator_event", &apps).len(), 1);
        assert!(
            handlers.for_event("raven_channel_typing", &apps).is_empty(),
            "the operator's file wins"
        );
        assert!(
            handlers.for_event("mine", &["helpdesk".into()]).is_empty(),
            "not installed"
        );
    }
}
