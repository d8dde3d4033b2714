//! The load generator at tiny sizes against our own server (one instance, and two), so a
//! change that breaks it (or the server's side of what it measures) fails the test suite.
//! Needs `redis-server`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The frappe-realtime binary of the same profile as this test's loadgen, built if missing
/// (`cargo test -p loadgen` alone does not build the root package's binary).
fn server_binary() -> PathBuf {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_loadgen"));
    let dir = loadgen
        .parent()
        .expect("the loadgen binary is in a target directory");
    let server = dir.join("frappe-realtime");
    if !server.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "frappe-realtime", "--bin", "frappe-realtime"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building frappe-realtime failed");
    }
    server
}

/// Run the loadgen with `args`, at most `limit`, and return its JSON report.
fn run_loadgen(args: &[&str], limit: Duration) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let server = server_binary();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--server-bin")
        .arg(&server)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting loadgen");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for loadgen") {
            break status;
        }
        if Instant::now() > deadline {
            // SIGTERM first: the loadgen then stops the server and redis-server it started.
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill has no memory preconditions; the PID is our own child's.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut printed = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut printed);
    }
    println!("{printed}");
    assert!(status.success(), "loadgen failed ({status}):\n{printed}");
    let text = std::fs::read_to_string(&json).expect("the JSON report");
    serde_json::from_str(&text).expect("the report is JSON")
}

fn number(value: &Value, pointer: &str) -> f64 {
    value
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {value:#}"))
}

#[test]
fn every_phase_runs_against_our_server_and_compares() {
    let report = run_loadgen(
        &[
            "--no-pin",
            "--clients",
            "20",
            "--phases",
            "connect,idle,broadcast,user,storm,storm-shared,scale",
            "--broadcast-rates",
            "1,20",
            "--user-rates",
            "20",
            "--step-secs",
            "1",
            "--min-events",
            "2",
            "--idle-secs",
            "0.3",
            "--grace-secs",
            "3",
            "--lag-ms",
            "5000",
            "--reconnect-delay-ms",
            "100",
            "--reconnect-delay-max-ms",
            "400",
            "--storm-timeout-secs",
            "30",
            "--scale-steps",
            "10,30",
            "--compare",
            "ours",
            "--compare-label",
            "again",
        ],
        Duration::from_secs(240),
    );
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert!(run["error"].is_null(), "{:#}", run["error"]);
        assert_eq!(number(run, "/connect/connected"), 20.0);
        // One get_user_info call per connection, one sid per client.
        assert_eq!(number(run, "/connect/auth/calls"), 20.0);
        assert_eq!(number(run, "/connect/auth/distinct_credentials"), 20.0);
        assert!(number(run, "/idle/rss_kib") > 0.0);
        for kind in ["broadcast", "user_room"] {
            let first = &run[kind]["steps"][0];
            assert!(number(first, "/expected") > 0.0, "{first:#}");
            assert_eq!(number(first, "/delivered"), number(first, "/expected"));
            assert!(number(first, "/latency/p50_ms") > 0.0);
        }
        // 20 clients × 2 events at 1 ev/s, all to `all`.
        assert_eq!(number(run, "/broadcast/steps/0/expected"), 40.0);
        let storms = run["storms"].as_array().expect("storms");
        assert_eq!(storms.len(), 2);
        for storm in storms {
            assert_eq!(number(storm, "/back"), 20.0, "{storm:#}");
            assert!(number(storm, "/all_back_ms") > 0.0);
            assert!(number(storm, "/auth/calls") >= 1.0);
        }
        assert_eq!(number(&storms[1], "/credentials"), 5.0);
        let scale = run["scale"].as_array().expect("scale");
        assert_eq!(scale.len(), 2);
        assert_eq!(number(&scale[1], "/connected"), 30.0);
    }
    assert!(!report["comparison"].as_array().expect("ratios").is_empty());
    assert_eq!(
        report["node_reference"]
            .as_array()
            .expect("reference")
            .len(),
        5
    );
}

#[test]
fn frappe_16_handshakes_carry_the_socket_secret() {
    let report = run_loadgen(
        &[
            "--no-pin",
            "--frappe-version",
            "16",
            "--clients",
            "10",
            "--phases",
            "connect,broadcast",
            "--broadcast-rates",
            "5",
            "--step-secs",
            "1",
            "--lag-ms",
            "5000",
        ],
        Duration::from_secs(120),
    );
    let run = &report["runs"][0];
    assert!(run["error"].is_null(), "{:#}", run["error"]);
    assert_eq!(number(run, "/connect/connected"), 10.0);
    assert_eq!(number(run, "/connect/auth/bad_secret"), 0.0);
    assert_eq!(number(run, "/connect/auth/unknown"), 0.0);
    // Only System Users join `all`: a user-less (secret-less) answer would deliver nothing.
    assert_eq!(
        number(run, "/broadcast/steps/0/delivered"),
        number(run, "/broadcast/steps/0/expected")
    );
}

#[test]
fn two_instances_share_the_clients_and_report_each() {
    let report = run_loadgen(
        &[
            "--no-pin",
            "--instances",
            "2",
            "--clients",
            "20",
            "--phases",
            "connect,idle,broadcast,user",
            "--broadcast-rates",
            "2",
            "--user-rates",
            "20",
            "--step-secs",
            "1",
            "--min-events",
            "2",
            "--idle-secs",
            "0.3",
            "--lag-ms",
            "5000",
        ],
        Duration::from_secs(120),
    );
    let run = &report["runs"][0];
    assert!(run["error"].is_null(), "{:#}", run["error"]);
    let instances = run["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2);
    assert_ne!(instances[0]["port"], instances[1]["port"]);
    let baselines: f64 = instances
        .iter()
        .map(|i| number(i, "/rss_baseline_kib"))
        .sum();
    assert_eq!(number(run, "/server_rss_baseline_kib"), baselines);
    // Clients go to the instances in turn: 10 each.
    assert_eq!(number(run, "/connect/connected"), 20.0);
    for each in run["connect"]["per_instance"].as_array().expect("connect") {
        assert_eq!(number(each, "/connected"), 10.0, "{each:#}");
    }
    // Idle memory is the instances' sum, over every connection.
    let idle = &run["idle"];
    let each = idle["per_instance"].as_array().expect("idle");
    assert_eq!(each.len(), 2);
    assert!(each.iter().all(|i| number(i, "/rss_kib") > 0.0));
    let summed: f64 = each.iter().map(|i| number(i, "/rss_kib")).sum();
    assert_eq!(number(idle, "/rss_kib"), summed);
    assert_eq!(number(idle, "/connections"), 20.0);
    // Every broadcast reaches the clients of both instances: each event × 10 clients each.
    let step = &run["broadcast"]["steps"][0];
    let events = number(step, "/published");
    assert!(events >= 2.0, "{step:#}");
    assert_eq!(number(step, "/expected"), events * 20.0, "{step:#}");
    assert_eq!(number(step, "/delivered"), events * 20.0, "{step:#}");
    for each in step["per_instance"].as_array().expect("step") {
        assert_eq!(number(each, "/clients"), 10.0, "{each:#}");
        assert_eq!(number(each, "/delivered"), events * 10.0, "{each:#}");
    }
    assert!(number(step, "/redis_cpu_us_per_publication") > 0.0);
    // A user's room is on one instance only; together they deliver every event once.
    let user = &run["user_room"]["steps"][0];
    assert_eq!(number(user, "/delivered"), number(user, "/expected"));
    let by_instance: f64 = user["per_instance"]
        .as_array()
        .expect("user step")
        .iter()
        .map(|i| number(i, "/delivered"))
        .sum();
    assert_eq!(by_instance, number(user, "/delivered"));
}

#[test]
fn several_instances_refuse_the_storms() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--no-pin", "--instances", "2", "--phases", "connect,storm"])
        .output()
        .expect("running loadgen");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--instances 2") && stderr.contains("storm"),
        "{stderr}"
    );
}
