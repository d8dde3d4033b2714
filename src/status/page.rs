//! The status page as HTML: written here, no template engine and no script. Every value that
//! came from a client or a site (user names, rooms, headers) is escaped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::snapshot::{InstanceSummary, SiteStatus, Status};
use crate::admission::RefusedHandshake;
use crate::call_health::CallHealthReport;

const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1f272e; background: #f8f8f8; }
h1 { font-size: 20px; margin: 0 0 .2em; } h2 { font-size: 16px; margin: 1.6em 0 .5em; }
.meta { color: #6c7680; margin-bottom: 1em; }
.cards { display: flex; gap: 1em; flex-wrap: wrap; }
.card { background: #fff; border: 1px solid #e2e6e9; border-radius: 8px; padding: .8em 1.1em; min-width: 14em; }
.card b { display: block; font-size: 12px; color: #6c7680; font-weight: 500; text-transform: uppercase; }
.good { color: #2e7d32; } .bad { color: #c62828; }
table { border-collapse: collapse; background: #fff; border: 1px solid #e2e6e9; margin-bottom: .5em; }
th, td { text-align: left; padding: .35em .8em; border-bottom: 1px solid #eef0f2; vertical-align: top; }
th { font-size: 12px; color: #6c7680; font-weight: 500; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td:first-child { white-space: nowrap; }
code { font-size: 13px; }
.empty { color: #6c7680; font-style: italic; }
";

/// The whole page for `status`.
pub fn render(status: &Status) -> String {
    let mut html = String::with_capacity(8 * 1024);
    html.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    html.push_str("<meta http-equiv=\"refresh\" content=\"5\">");
    html.push_str("<title>frappe-realtime status</title><style>");
    html.push_str(STYLE);
    html.push_str("</style></head><body>");
    let _ = write!(
        html,
        "<h1>frappe-realtime</h1><div class=\"meta\">version {} · Frappe {} protocol · \
         refreshed every 5 s</div>",
        escape(status.version),
        escape(&status.frappe_version)
    );
    health_cards(&mut html, status);
    if let Some(instances) = &status.instances {
        instances_table(&mut html, instances, status.this_instance.as_deref());
    }
    sites(&mut html, &status.sites);
    refusals(&mut html, status);
    html.push_str("</body></html>");
    html
}

fn health_cards(html: &mut String, status: &Status) {
    html.push_str("<div class=\"cards\">");
    let (class, redis) = if status.redis_subscribed {
        ("good", "subscribed to <code>events</code>")
    } else {
        ("bad", "not subscribed: no event reaches clients")
    };
    let _ = write!(
        html,
        "<div class=\"card\" id=\"redis\"><b>Redis</b><span class=\"{class}\">{redis}</span></div>"
    );
    frappe_card(html, &status.frappe_calls, status.generated_at_ms);
    let sockets: usize = status
        .sites
        .iter()
        .flat_map(|site| site.sockets.values())
        .sum();
    let users: usize = status.sites.iter().map(|site| site.users_online).sum();
    let _ = write!(
        html,
        "<div class=\"card\" id=\"totals\"><b>Connected</b>{sockets} sockets · {users} users \
         on {} sites</div>",
        status.sites.len()
    );
    if let Some(bench_log) = status.bench_log {
        let role = match bench_log.copier {
            true => "this instance copies <code>events</code> into it",
            false => "another instance copies <code>events</code> into it",
        };
        let _ = write!(
            html,
            "<div class=\"card\" id=\"bench-log\"><b>Bench log</b>{role}</div>"
        );
    }
    html.push_str("</div>");
}

fn frappe_card(html: &mut String, calls: &CallHealthReport, now_ms: u64) {
    html.push_str("<div class=\"card\" id=\"frappe\"><b>Calls to Frappe</b>");
    let counts: Vec<String> = calls
        .outcomes
        .iter()
        .map(|(outcome, count)| format!("{count} {}", escape(outcome)))
        .collect();
    if counts.is_empty() {
        html.push_str("none yet");
    } else {
        html.push_str(&counts.join(" · "));
    }
    let _ = write!(
        html,
        "<br>{} of {} under way · timeout {} ms",
        calls.in_flight, calls.concurrency, calls.timeout_ms
    );
    if let Some(failure) = &calls.last_failure {
        let _ = write!(
            html,
            "<br><span class=\"bad\">last failure: {} on <code>{}</code>, {}</span>",
            escape(failure.outcome),
            escape(failure.endpoint),
            ago(now_ms, failure.at_ms)
        );
    }
    html.push_str("</div>");
}

/// Every live instance on the same Redis, as each last published itself.
fn instances_table(html: &mut String, instances: &[InstanceSummary], this: Option<&str>) {
    html.push_str("<h2>Instances</h2>");
    if instances.is_empty() {
        html.push_str("<p class=\"empty\">None read from Redis.</p>");
        return;
    }
    html.push_str(
        "<table id=\"instances\"><tr><th>instance</th><th>websocket</th><th>polling</th>\
         <th>users online</th><th>guests</th><th>version</th></tr>",
    );
    let mut sorted: Vec<&InstanceSummary> = instances.iter().collect();
    sorted.sort_by(|a, b| a.instance.cmp(&b.instance));
    for instance in sorted {
        let sum = |count: fn(&super::snapshot::SiteCount) -> usize| -> usize {
            instance.sites.iter().map(count).sum()
        };
        let name = escape(&instance.instance);
        let marker = if Some(instance.instance.as_str()) == this {
            " (this one)"
        } else {
            ""
        };
        let _ = write!(
            html,
            "<tr data-instance=\"{name}\"><td><code>{name}</code>{marker}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            sum(|site| site.websocket),
            sum(|site| site.polling),
            sum(|site| site.users_online),
            sum(|site| site.guests),
            escape(&instance.version),
        );
    }
    html.push_str("</table>");
    bench_wide(html, instances);
}

/// Each site over every instance: its sockets, and who is connected anywhere.
fn bench_wide(html: &mut String, instances: &[InstanceSummary]) {
    // Per site: websocket, polling, the users named, whether an instance named only some,
    // and Guests.
    let mut sites: BTreeMap<&str, (usize, usize, BTreeSet<&str>, bool, usize)> = BTreeMap::new();
    for site in instances.iter().flat_map(|instance| &instance.sites) {
        let entry = sites.entry(&site.site).or_default();
        entry.0 += site.websocket;
        entry.1 += site.polling;
        entry.2.extend(site.users.iter().map(String::as_str));
        entry.3 |= site.users.len() < site.users_online;
        entry.4 += site.guests;
    }
    html.push_str(
        "<table id=\"bench-sites\"><tr><th>site, every instance</th><th>websocket</th>\
         <th>polling</th><th>users connected</th><th>guests</th></tr>",
    );
    for (site, (websocket, polling, users, partial, guests)) in sites {
        let names: Vec<String> = users.iter().map(|user| escape(user)).collect();
        let (at_least, more) = if partial {
            ("at least ", ", …")
        } else {
            ("", "")
        };
        let _ = write!(
            html,
            "<tr data-bench-site=\"{name}\"><td><code>{name}</code></td><td class=\"num\">{websocket}</td>\
             <td class=\"num\">{polling}</td><td>{at_least}{}: {}{more}</td><td class=\"num\">{guests}</td></tr>",
            users.len(),
            names.join(", "),
            name = escape(site),
        );
    }
    html.push_str("</table>");
}

fn sites(html: &mut String, sites: &[SiteStatus]) {
    html.push_str("<h2>Sites</h2>");
    if sites.is_empty() {
        html.push_str("<p class=\"empty\">No site found under <code>sites/</code>.</p>");
        return;
    }
    html.push_str(
        "<table id=\"sites\"><tr><th>site</th><th>websocket</th><th>polling</th>\
         <th>users online</th><th>guests</th><th>busiest rooms (sockets)</th></tr>",
    );
    for site in sites {
        let count = |transport: &str| site.sockets.get(transport).copied().unwrap_or(0);
        let _ = write!(
            html,
            "<tr data-site=\"{name}\"><td><code>{name}</code></td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            count("websocket"),
            count("polling"),
            users(site),
            site.guests,
            rooms(site),
            name = escape(&site.site),
        );
    }
    html.push_str("</table>");
}

fn users(site: &SiteStatus) -> String {
    let mut text = site.users_online.to_string();
    if !site.users.is_empty() {
        let names: Vec<String> = site.users.iter().map(|user| escape(user)).collect();
        let _ = write!(text, ": {}", names.join(", "));
        if site.users.len() < site.users_online {
            text.push_str(", …");
        }
    }
    text
}

fn rooms(site: &SiteStatus) -> String {
    if site.busiest_rooms.is_empty() {
        return "<span class=\"empty\">none</span>".to_owned();
    }
    let rows: Vec<String> = site
        .busiest_rooms
        .iter()
        .map(|room| format!("<code>{}</code> ({})", escape(&room.room), room.members))
        .collect();
    rows.join("<br>")
}

fn refusals(html: &mut String, status: &Status) {
    html.push_str("<h2>Last refused handshakes</h2>");
    if status.refused_handshakes.is_empty() {
        html.push_str("<p class=\"empty\">None since the start.</p>");
        return;
    }
    html.push_str(
        "<table id=\"refusals\"><tr><th>when</th><th>site</th><th>namespace</th>\
         <th>reason</th><th>told the client</th><th>Host</th><th>Origin</th>\
         <th>X-Frappe-Site-Name</th><th>transport</th></tr>",
    );
    for refused in &status.refused_handshakes {
        refusal_row(html, refused, status.generated_at_ms);
    }
    html.push_str("</table>");
}

fn refusal_row(html: &mut String, refused: &RefusedHandshake, now_ms: u64) {
    let header = |value: &Option<String>| match value {
        Some(value) => format!("<code>{}</code>", escape(value)),
        None => "<span class=\"empty\">none</span>".to_owned(),
    };
    let _ = write!(
        html,
        "<tr data-reason=\"{reason}\"><td>{}</td><td><code>{}</code></td><td><code>{}</code></td>\
         <td>{reason}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        ago(now_ms, refused.at_ms),
        escape(&refused.site),
        escape(&refused.namespace),
        escape(&refused.message),
        header(&refused.host),
        header(&refused.origin),
        header(&refused.site_name),
        refused.transport,
        reason = escape(refused.reason),
    );
}

/// "3 s ago", "12 min ago".
fn ago(now_ms: u64, at_ms: u64) -> String {
    let seconds = now_ms.saturating_sub(at_ms) / 1000;
    match seconds {
        0..120 => format!("{seconds} s ago"),
        120..7200 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}

/// `text` safe inside HTML text and double-quoted attributes.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::snapshot::RoomSize;

    fn status() -> Status {
        Status {
            generated_at_ms: 100_000,
            version: "0.1.0",
            frappe_version: "16".into(),
            redis_subscribed: true,
            frappe_calls: CallHealthReport {
                outcomes: BTreeMap::from([("ok", 3)]),
                last_answer_ms: Some(99_000),
                last_failure: None,
                in_flight: 0,
                concurrency: 16,
                timeout_ms: 10_000,
            },
            sites: vec![SiteStatus {
                site: "a.local".into(),
                sockets: BTreeMap::from([("websocket", 2), ("polling", 1)]),
                users_online: 1,
                users: vec!["<script>alert(1)</script>@x.com".into()],
                guests: 0,
                busiest_rooms: vec![RoomSize {
                    room: "doc:ToDo/\"1\"".into(),
                    members: 2,
                }],
            }],
            refused_handshakes: vec![RefusedHandshake {
                at_ms: 40_000,
                site: "a.local".into(),
                namespace: "/a.local".into(),
                reason: "invalid_origin",
                message: "Invalid origin".into(),
                transport: "polling",
                host: Some("a.local".into()),
                origin: Some("https://evil.example".into()),
                site_name: None,
            }],
            this_instance: None,
            instances: None,
            bench_log: None,
        }
    }

    #[test]
    fn what_clients_and_sites_named_is_escaped() {
        let html = render(&status());
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;@x.com"));
        assert!(html.contains("doc:ToDo/&quot;1&quot;"));
    }

    #[test]
    fn a_refusal_shows_its_reason_and_deciding_headers() {
        let html = render(&status());
        assert!(html.contains("data-reason=\"invalid_origin\""));
        assert!(html.contains("https://evil.example"));
        assert!(html.contains("60 s ago"));
    }
}
