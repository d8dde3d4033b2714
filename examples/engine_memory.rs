//! What one idle Engine.IO session costs our server (`src/engine/`), in heap and in RSS
//! (docs/design.md, "Engine.IO: why ours, what it keeps per session").
//!
//! `engine_memory [SESSIONS] [--upgrade]` starts this same program as the server
//! (`engine_memory serve`, a child process, on a free loopback port), reads its heap and RSS,
//! opens SESSIONS (default 5000) websocket sessions to it and keeps them idle (answering
//! PINGs), reads them again, and prints the difference per session. With `--upgrade` each
//! session opens on polling and upgrades to websocket, as browsers do.
//!
//! The server counts its live heap with a global allocator that forwards to the system's and
//! keeps two counters; RSS is `VmRSS` from /proc. It keeps the request headers the product
//! keeps (`handshake::SESSION_HEADERS`) and the peer address (`ConnectInfo`), as the product
//! does. Linux only (/proc).

use std::net::SocketAddr;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use frappe_realtime::engine::{
    CloseReason, EngineConfig, EngineHandler, EngineService, Session, Str,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{HEAP_BLOCKS, HEAP_BYTES};

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

const BOUND: Duration = Duration::from_secs(10);
/// Time for the server to finish what the last connections started (upgrades, tasks).
const SETTLE: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve") {
        return serve().await;
    }
    let upgrade = args.iter().any(|a| a == "--upgrade");
    let sessions = match args.iter().find(|a| !a.starts_with("--")) {
        None => 5000,
        Some(n) => match n.parse() {
            Ok(n) => n,
            Err(_) => {
                eprintln!("usage: engine_memory [SESSIONS] [--upgrade]");
                return ExitCode::from(2);
            }
        },
    };
    match measure(sessions, upgrade).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("engine_memory: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The server: our engine on /socket.io with the product's defaults, an echo handler that
/// counts its sessions, and `/stats`.
async fn serve() -> ExitCode {
    let handler = Arc::new(Counter::default());
    let config = EngineConfig {
        session_headers: frappe_realtime::handshake::SESSION_HEADERS.to_vec(),
        ..EngineConfig::default()
    };
    let counted = handler.clone();
    let stats = Router::new().route(
        "/stats",
        get(move || async move {
            format!(
                "{} {} {} {}",
                counted.sessions.load(Ordering::Relaxed),
                HEAP_BYTES.load(Ordering::Relaxed),
                HEAP_BLOCKS.load(Ordering::Relaxed),
                rss_kib(),
            )
        }),
    );
    let app = Router::new().fallback_service(EngineService::new(handler, config, stats));
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        return ExitCode::FAILURE;
    };
    let Ok(address) = listener.local_addr() else {
        return ExitCode::FAILURE;
    };
    println!("{address}");
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    match axum::serve(listener, app).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Counter {
    sessions: AtomicUsize,
}

impl EngineHandler for Counter {
    type Data = ();

    fn on_open(&self, _session: &Arc<Session<()>>) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    fn on_message(&self, session: &Arc<Session<()>>, text: Str) {
        let _ = session.send(text, &[]);
    }

    fn on_binary(&self, session: &Arc<Session<()>>, data: Bytes) {
        let _ = session.send_binary(data);
    }

    fn on_close(&self, _session: &Arc<Session<()>>, _reason: CloseReason) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server's numbers at one moment.
#[derive(Debug, Clone, Copy)]
struct Stats {
    sessions: i64,
    heap: i64,
    blocks: i64,
    rss_kib: i64,
}

async fn measure(sessions: usize, upgrade: bool) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut server = tokio::process::Command::new(exe)
        .arg("serve")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let stdout = server.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    tokio::time::timeout(BOUND, BufReader::new(stdout).read_line(&mut line))
        .await
        .map_err(|_| "the server did not start")?
        .map_err(|e| e.to_string())?;
    let address: SocketAddr = line
        .trim()
        .parse()
        .map_err(|_| format!("address? {line}"))?;

    tokio::time::sleep(SETTLE).await;
    let before = stats(address).await?;
    let mut clients = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        clients.push(tokio::spawn(idle_client(address, upgrade).await?));
    }
    tokio::time::sleep(SETTLE).await;
    let during = stats(address).await?;
    for client in &clients {
        client.abort();
    }
    drop(clients);
    tokio::time::sleep(SETTLE).await;
    let after = stats(address).await?;
    let _ = server.kill().await;

    report(sessions, upgrade, before, during, after);
    Ok(())
}

fn report(sessions: usize, upgrade: bool, before: Stats, during: Stats, after: Stats) {
    let n = sessions as f64;
    let how = if upgrade {
        "polling, then upgraded to websocket"
    } else {
        "websocket"
    };
    println!(
        "{sessions} idle sessions ({how}); server open sessions: {}",
        during.sessions
    );
    println!(
        "heap per session: {:.0} B in {:.1} blocks",
        (during.heap - before.heap) as f64 / n,
        (during.blocks - before.blocks) as f64 / n
    );
    println!(
        "RSS per session:  {:.0} B",
        (during.rss_kib - before.rss_kib) as f64 * 1024.0 / n
    );
    println!(
        "after the clients left: {} sessions, heap {:+} B, RSS {:+} KiB against before",
        after.sessions,
        after.heap - before.heap,
        after.rss_kib - before.rss_kib
    );
}

/// GET /stats on its own connection.
async fn stats(address: SocketAddr) -> Result<Stats, String> {
    let body = tokio::time::timeout(BOUND, get_body(address, "/stats"))
        .await
        .map_err(|_| "no /stats answer in time")??;
    let numbers: Vec<i64> = body
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers[..] {
        [sessions, heap, blocks, rss_kib] => Ok(Stats {
            sessions,
            heap,
            blocks,
            rss_kib,
        }),
        _ => Err(format!("unexpected /stats answer: {body}")),
    }
}

async fn get_body(address: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let (_, body) = response.split_once("\r\n\r\n").ok_or("no body")?;
    Ok(body.to_owned())
}

/// Open one session and return the task that keeps it idle (answering PINGs).
async fn idle_client(
    address: SocketAddr,
    upgrade: bool,
) -> Result<impl Future<Output = ()> + use<>, String> {
    let base = format!("ws://{address}/socket.io/?EIO=4&transport=websocket");
    let connecting = async {
        if upgrade {
            let open = get_body(address, "/socket.io/?EIO=4&transport=polling").await?;
            let start = open.find(r#""sid":""#).ok_or("no sid")? + 7;
            let sid = open.get(start..start + 16).ok_or("short sid")?;
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("{base}&sid={sid}"))
                .await
                .map_err(|e| e.to_string())?;
            ws.send(Message::text("2probe"))
                .await
                .map_err(|e| e.to_string())?;
            let _probe = ws.next().await;
            ws.send(Message::text("5"))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(ws)
        } else {
            let (mut ws, _) = tokio_tungstenite::connect_async(base)
                .await
                .map_err(|e| e.to_string())?;
            let _open = ws.next().await;
            Ok(ws)
        }
    };
    let mut ws = tokio::time::timeout(BOUND, connecting)
        .await
        .map_err(|_| "a session did not open in time")??;
    Ok(async move {
        while let Some(Ok(message)) = ws.next().await {
            if message.to_text().is_ok_and(|text| text == "2") {
                let _ = ws.send(Message::text("3")).await;
            }
        }
    })
}
