//! What connection state recovery costs the Socket.IO layer (`src/socketio/`) in heap: per
//! connected socket, and per session kept after a transport cut so that its client can
//! recover it (docs/design.md, "Connection state recovery").
//!
//! `recovery_memory [SOCKETS]` (default 10000) builds an `Io` with recovery on
//! (`RecoveryConfig::default()`, room for at least SOCKETS kept sessions) and one namespace,
//! `/site.local`, whose handler admits every socket into the rooms of a Desk tab: `all`,
//! `user:user<i>@example.com`, `doctype:Sales Invoice` and `doc:Sales Invoice/SINV-<i>` (`i`,
//! the socket's index, comes in its CONNECT auth). It reads the live heap once they are built
//! (0), after SOCKETS clients connected (1), and after every client's transport was cut
//! (`CloseReason::TransportClose`) and the client dropped (2), checking that the namespace
//! kept SOCKETS sessions. Then it publishes one event to `doctype:Sales Invoice`, reconnects
//! every client with its `pid` and checks that each gets its old id, its pid and the event
//! back, and reads the heap again. The same run with recovery off tells what the hub leaves
//! behind after the cut, which is not the kept sessions' cost, and what recovery adds to a
//! connected socket. Single process, no network: the clients are the fake Engine.IO sessions
//! of the layer's tests (`tests/support/fake_session.rs`).
//!
//! It counts the live heap with a global allocator that forwards to the system's and keeps
//! two counters (`support/counting_alloc.rs`, as `engine_memory`). Left out: the Engine.IO
//! session, its queues and its TCP buffers (`engine_memory` measures them); the fake
//! session's own heap (measured as what dropping the clients frees, and subtracted); the
//! connect deadlines' queue (one entry per session opened in the last `connect_timeout`,
//! filled and emptied before the first reading; its size is printed); anything the
//! namespace's handler keeps per socket (Frappe's keeps who the user is).
//!
//! `cargo run --release --example recovery_memory -- 20000`

use std::future;
use std::ops::Sub;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use frappe_realtime::socketio::{
    CloseReason, ConnectFuture, Handshake, Io, IoConfig, Namespace, NamespaceHandler, Recovery,
    RecoveryConfig, RecoveryStats, Refusal, Sid,
};
use serde::Deserialize;

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
#[path = "../tests/support/fake_session.rs"]
mod fake_session;

use counting_alloc::{HEAP_BLOCKS, HEAP_BYTES};
use fake_session::Client;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

const NAMESPACE: &str = "/site.local";
/// Short, so that the connect deadlines' queue (and the weak reference each of its entries
/// holds to its session) is empty at every reading; the product's is 45 s.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(20);
/// Longer than `CONNECT_TIMEOUT`: the deadlines' sweeping task has run and ended.
const SETTLE: Duration = Duration::from_millis(200);
/// The room every socket is in besides `all`.
const DOCTYPE_ROOM: &str = "doctype:Sales Invoice";
/// The event published while the sessions are kept.
const MISSED_EVENT: &str = "list_update";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let sockets = match std::env::args().nth(1) {
        None => 10_000,
        Some(n) => match n.parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("usage: recovery_memory [SOCKETS]");
                return ExitCode::from(2);
            }
        },
    };
    match measure(sockets).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("recovery_memory: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Live heap at one moment.
#[derive(Debug, Clone, Copy)]
struct Heap {
    bytes: isize,
    blocks: isize,
}

impl Heap {
    fn now() -> Self {
        Self {
            bytes: HEAP_BYTES.load(Ordering::Relaxed),
            blocks: HEAP_BLOCKS.load(Ordering::Relaxed),
        }
    }

    /// Per socket, for the report.
    fn per(self, sockets: usize) -> String {
        let n = sockets as f64;
        format!(
            "{:.0} B in {:.1} blocks",
            self.bytes as f64 / n,
            self.blocks as f64 / n
        )
    }
}

impl Sub for Heap {
    type Output = Heap;

    fn sub(self, other: Heap) -> Heap {
        Heap {
            bytes: self.bytes - other.bytes,
            blocks: self.blocks - other.blocks,
        }
    }
}

/// Admits every socket into the rooms of a Desk tab of user `i`, the socket's index in its
/// CONNECT auth; keeps nothing per socket.
#[derive(Default)]
struct DeskTab {
    /// CONNECTs that found their kept session.
    restoring: AtomicUsize,
}

#[derive(Deserialize)]
struct DeskAuth {
    i: usize,
}

impl NamespaceHandler for DeskTab {
    fn connect(&self, handshake: Handshake) -> ConnectFuture {
        let verdict = match handshake.auth_as::<DeskAuth>() {
            Ok(DeskAuth { i }) => {
                if matches!(handshake.recovery(), Recovery::Restoring(_)) {
                    self.restoring.fetch_add(1, Ordering::Relaxed);
                }
                for room in desk_rooms(i) {
                    handshake.socket.join(&room);
                }
                Ok(())
            }
            Err(e) => Err(Refusal::new(format!("no socket index in the auth: {e}"))),
        };
        Box::pin(future::ready(verdict))
    }
}

fn desk_rooms(i: usize) -> [String; 4] {
    [
        "all".to_owned(),
        format!("user:user{i}@example.com"),
        DOCTYPE_ROOM.to_owned(),
        format!("doc:Sales Invoice/SINV-{i}"),
    ]
}

/// A CONNECT reply and the packets queued after it.
struct Reply {
    sid: Sid,
    pid: Option<Sid>,
    after: Vec<String>,
}

#[derive(Deserialize)]
struct ReplyPayload {
    sid: Sid,
    pid: Option<Sid>,
}

/// CONNECT to the namespace with `auth` and read the reply (the handler decides at once).
fn connect(client: &Client, auth: &str) -> Result<Reply, String> {
    client.send(&format!("0{NAMESPACE},{auth}"));
    let mut texts = client.texts().into_iter();
    let reply = texts.next().ok_or("no answer to a CONNECT")?;
    let payload = reply
        .strip_prefix(&format!("0{NAMESPACE},"))
        .ok_or_else(|| format!("not a CONNECT reply: {reply}"))?;
    let payload: ReplyPayload = serde_json::from_str(payload)
        .map_err(|e| format!("unreadable CONNECT reply {reply}: {e}"))?;
    Ok(Reply {
        sid: payload.sid,
        pid: payload.pid,
        after: texts.collect(),
    })
}

/// Heap readings of one run.
struct Run {
    /// The connect deadlines' queue, filled with `sockets` entries and emptied.
    deadlines: Heap,
    /// (0): the Io and its namespace built, the queue warmed.
    base: Heap,
    /// (1): every client connected.
    connected: Heap,
    /// Every transport cut, the clients still held.
    cut: Heap,
    /// (2): the clients dropped.
    kept: Heap,
    /// What recovery held at (2), when on.
    stats: Option<RecoveryStats>,
    /// The second round, with recovery on.
    recovered: Option<Recovered>,
    /// Against before the Io was built, once it is dropped.
    leftover: Heap,
}

struct Recovered {
    /// After one publication while the sessions were kept.
    logged: RecoveryStats,
    /// Replies with the old sid and pid, and the missed event after them.
    same_ids: usize,
    replayed: usize,
    /// CONNECTs the handler was told are restoring.
    restoring: usize,
    /// (3): every client connected again.
    connected: Heap,
    /// Every client gone for good (DISCONNECT, then its transport closed), still held.
    left: Heap,
    /// Then dropped.
    gone: Heap,
}

async fn measure(sockets: usize) -> Result<(), String> {
    let off = run(sockets, false).await?;
    let on = run(sockets, true).await?;
    report(sockets, &off, &on)
}

/// One run: with `recovery`, the second round too.
async fn run(sockets: usize, recovery: bool) -> Result<Run, String> {
    // The program's own bookkeeping, allocated before any reading.
    let mut clients: Vec<Client> = Vec::with_capacity(sockets);
    let mut ids: Vec<(Sid, Option<Sid>)> = Vec::with_capacity(sockets);
    let start = Heap::now();

    let recovery_config = recovery.then(|| {
        let defaults = RecoveryConfig::default();
        RecoveryConfig {
            max_sessions: defaults.max_sessions.max(sockets),
            ..defaults
        }
    });
    let io = Io::new(IoConfig {
        connect_timeout: CONNECT_TIMEOUT,
        recovery: recovery_config,
        ..IoConfig::default()
    });
    let handler = Arc::new(DeskTab::default());
    let namespace = io
        .add_namespace(NAMESPACE, handler.clone())
        .map_err(|e| e.to_string())?;
    let built = Heap::now();

    // Sessions that never CONNECT: their deadlines pass and the queue keeps its capacity.
    for _ in 0..sockets {
        clients.push(Client::open(&io));
    }
    tokio::time::sleep(SETTLE).await;
    for client in clients.drain(..) {
        if client.closed() != Some(CloseReason::ServerClose) {
            return Err("a session without CONNECT outlived its connect timeout".into());
        }
        client.end(CloseReason::TransportClose);
    }
    let base = Heap::now();

    // (1) Every client connected, in its rooms.
    for i in 0..sockets {
        let client = Client::open(&io);
        let reply = connect(&client, &format!(r#"{{"recovery":true,"i":{i}}}"#))?;
        if recovery && reply.pid.is_none() {
            return Err("a CONNECT reply without a pid, with recovery on".into());
        }
        ids.push((reply.sid, reply.pid));
        clients.push(client);
    }
    tokio::time::sleep(SETTLE).await;
    let connected = Heap::now();
    expect_sockets(&namespace, sockets)?;
    for room in ["all", DOCTYPE_ROOM] {
        if namespace.room_len(room) != sockets {
            let found = namespace.room_len(room);
            return Err(format!("{found} sockets in {room}, not {sockets}"));
        }
    }

    // (2) Every transport cut, then the clients dropped.
    for client in &clients {
        client.end(CloseReason::TransportClose);
    }
    let cut = Heap::now();
    clients.clear();
    let kept = Heap::now();
    expect_sockets(&namespace, 0)?;
    let stats = namespace.recovery_stats();
    if recovery {
        let kept_sessions = stats.map_or(0, |stats| stats.kept_sessions);
        if kept_sessions != sockets {
            return Err(format!(
                "the namespace kept {kept_sessions} sessions after {sockets} transports were cut"
            ));
        }
    }

    let recovered = match recovery {
        true => Some(recover(&io, &namespace, &handler, &mut clients, &ids).await?),
        false => None,
    };

    drop((namespace, handler, io));
    tokio::time::sleep(SETTLE).await;
    let leftover = Heap::now() - start;
    Ok(Run {
        deadlines: base - built,
        base,
        connected,
        cut,
        kept,
        stats,
        recovered,
        leftover,
    })
}

/// (3) One publication while the sessions are kept, then every client back with its pid;
/// then every client gone for good.
async fn recover(
    io: &Io,
    namespace: &Namespace,
    handler: &DeskTab,
    clients: &mut Vec<Client>,
    ids: &[(Sid, Option<Sid>)],
) -> Result<Recovered, String> {
    let update = serde_json::json!({"doctype": "Sales Invoice", "name": "SINV-0"});
    namespace
        .broadcast(Some(DOCTYPE_ROOM), None, MISSED_EVENT, &update)
        .map_err(|e| format!("cannot publish: {e}"))?;
    let logged = namespace
        .recovery_stats()
        .ok_or("recovery is off in a recovery run")?;
    if logged.log_events != 1 {
        return Err(format!("the log holds {} events, not 1", logged.log_events));
    }

    let (mut same_ids, mut replayed) = (0, 0);
    for (i, &(sid, pid)) in ids.iter().enumerate() {
        let pid = pid.ok_or("no pid to recover with")?;
        let client = Client::open(io);
        let auth = format!(r#"{{"pid":"{pid}","offset":"0","i":{i}}}"#);
        let reply = connect(&client, &auth)?;
        if reply.sid == sid && reply.pid == Some(pid) {
            same_ids += 1;
        }
        let missed = format!(r#"2{NAMESPACE},["{MISSED_EVENT}""#);
        if let [event] = &reply.after[..]
            && event.starts_with(&missed)
        {
            replayed += 1;
        }
        clients.push(client);
    }
    tokio::time::sleep(SETTLE).await;
    let connected = Heap::now();
    expect_sockets(namespace, ids.len())?;
    let stats = namespace.recovery_stats().unwrap_or_default();
    if stats.kept_sessions != 0 {
        let left = stats.kept_sessions;
        return Err(format!(
            "{left} kept sessions left after every client came back"
        ));
    }

    for client in clients.iter() {
        client.send(&format!("1{NAMESPACE},"));
        client.end(CloseReason::TransportClose);
    }
    let left = Heap::now();
    clients.clear();
    let gone = Heap::now();
    expect_sockets(namespace, 0)?;
    let stats = namespace.recovery_stats().unwrap_or_default();
    if stats.kept_sessions != 0 {
        let kept = stats.kept_sessions;
        return Err(format!(
            "{kept} sessions kept after their clients' DISCONNECT"
        ));
    }
    Ok(Recovered {
        logged,
        same_ids,
        replayed,
        restoring: handler.restoring.load(Ordering::Relaxed),
        connected,
        left,
        gone,
    })
}

fn expect_sockets(namespace: &Namespace, expected: usize) -> Result<(), String> {
    match namespace.len() {
        n if n == expected => Ok(()),
        n => Err(format!("{n} sockets in {NAMESPACE}, not {expected}")),
    }
}

fn report(sockets: usize, off: &Run, on: &Run) -> Result<(), String> {
    let stats = on.stats.ok_or("no recovery stats from the recovery run")?;
    let again = on.recovered.as_ref().ok_or("no second round")?;
    // The fake sessions' own heap: what dropping them freed once their sockets were gone.
    let fake = |run: &Run| run.cut - run.kept;
    let socket_on = on.connected - on.base - fake(on);
    let socket_off = off.connected - off.base - fake(off);
    // After the cut the hub keeps its maps' capacity, with recovery on or off.
    let spare = off.kept - off.base;
    let kept = on.kept - on.base - spare;
    let fake_again = again.left - again.gone;
    let socket_again = again.connected - on.base - fake_again;
    let n = sockets;

    println!("{n} sockets on {NAMESPACE}, each in 4 rooms (all, user:…, {DOCTYPE_ROOM}, doc:…)");
    println!(
        "Socket.IO layer only: the Engine.IO session and its TCP buffers are measured by engine_memory."
    );
    println!(
        "heap per connected socket, recovery on:  {}",
        socket_on.per(n)
    );
    println!(
        "heap per connected socket, recovery off: {}",
        socket_off.per(n)
    );
    println!("heap per kept session:                   {}", kept.per(n));
    println!(
        "  kept sessions: {} of {n}; log: {} publications, {} B",
        stats.kept_sessions, stats.log_events, stats.log_bytes
    );
    println!(
        "  (2)-(0) is {}: the rest is what the hub's maps keep of their capacity after the cut, the same with recovery off",
        (on.kept - on.base).per(n)
    );
    println!(
        "one event to {DOCTYPE_ROOM} while they are kept: log {} publication, {} B",
        again.logged.log_events, again.logged.log_bytes
    );
    println!(
        "reconnected with their pid: {} of {n} recovered (old sid and pid), {} replayed the event, handler saw {} restoring",
        again.same_ids, again.replayed, again.restoring
    );
    println!(
        "heap per connected socket, recovered:    {}",
        socket_again.per(n)
    );
    println!(
        "after every client left for good: heap {:+} B against (0) (maps keep their capacity)",
        (again.gone - on.base).bytes
    );
    println!(
        "left out: the fake sessions' own heap ({} per session), the connect deadlines' queue ({} per session opened within connect_timeout)",
        fake(on).per(n),
        on.deadlines.per(n)
    );
    println!(
        "after dropping the Io: heap {:+} B (recovery off), {:+} B (recovery on) against before building it",
        off.leftover.bytes, on.leftover.bytes
    );
    if again.same_ids != n || again.replayed != n || again.restoring != n {
        return Err(format!(
            "{} of {n} sockets recovered, {} replayed the missed event",
            again.same_ids, again.replayed
        ));
    }
    Ok(())
}
