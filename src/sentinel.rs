//! Redis Sentinel for the subscriber: where Frappe's publisher finds `redis_queue`'s master
//! when the bench sets `redis_queue_sentinel_enabled` (protocol §1.3), the subscription finds
//! it too, asking the sentinels again at every reconnect, so it follows a failover. Frappe's
//! Node service ignores these keys and stays on `redis_queue`.

use std::fmt;
use std::time::Duration;

use url::Url;

/// How long one sentinel may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The bench's `redis_queue_sentinel*` and `redis_queue_master_*` keys.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// `redis_queue_sentinels`: `host:port` of each sentinel, asked in this order.
    pub sentinels: Vec<String>,
    /// `redis_queue_master_service`: the name the sentinels monitor the master under.
    pub master_service: String,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// Credentials for the master; `None`: those of the `redis_queue` URL.
    pub master_username: Option<String>,
    pub master_password: Option<String>,
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("SentinelConfig")
            .field("sentinels", &self.sentinels)
            .field("master_service", &self.master_service)
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &masked(&self.sentinel_password))
            .field("master_username", &self.master_username)
            .field("master_password", &masked(&self.master_password))
            .finish()
    }
}

impl SentinelConfig {
    /// A client for the master the sentinels name now; `queue_url` (`redis_queue`) gives
    /// the credentials when no `redis_queue_master_*` key does. Errors carry no credential.
    pub async fn master(&self, queue_url: &str) -> Result<redis::Client, String> {
        let mut problems = Vec::new();
        for sentinel in &self.sentinels {
            match self.ask(sentinel).await {
                Ok((host, port)) => return self.master_client(queue_url, &host, port),
                Err(problem) => problems.push(format!("{sentinel}: {problem}")),
            }
        }
        Err(format!(
            "no sentinel named the master {:?} ({})",
            self.master_service,
            problems.join("; ")
        ))
    }

    /// `SENTINEL get-master-addr-by-name` on one sentinel.
    async fn ask(&self, sentinel: &str) -> Result<(String, u16), String> {
        let url = with_credentials(
            &format!("redis://{sentinel}"),
            self.sentinel_username.as_deref(),
            self.sentinel_password.as_deref(),
        )?;
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        let asked = async {
            let mut connection = client.get_multiplexed_async_connection().await?;
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&self.master_service)
                .query_async::<Option<(String, u16)>>(&mut connection)
                .await
        };
        match tokio::time::timeout(ASK_TIMEOUT, asked).await {
            Ok(Ok(Some(address))) => Ok(address),
            Ok(Ok(None)) => Err("does not monitor that master".to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
        }
    }

    fn master_client(
        &self,
        queue_url: &str,
        host: &str,
        port: u16,
    ) -> Result<redis::Client, String> {
        let queue = Url::parse(queue_url).ok();
        let username = self.master_username.clone().or_else(|| {
            let user = queue.as_ref().map(Url::username).unwrap_or_default();
            (!user.is_empty()).then(|| decoded(user))
        });
        let password = self
            .master_password
            .clone()
            .or_else(|| queue.as_ref().and_then(Url::password).map(decoded));
        let scheme = match queue.as_ref().map(Url::scheme) {
            Some("rediss") => "rediss",
            _ => "redis",
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let url = with_credentials(
            &format!("{scheme}://{host}:{port}"),
            username.as_deref(),
            password.as_deref(),
        )?;
        redis::Client::open(url.as_str()).map_err(|e| e.to_string())
    }
}

/// `base` with `username` and `password` set (percent-encoded as a URL needs them).
fn with_credentials(
    base: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Url, String> {
    let mut url = Url::parse(base).map_err(|_| "not a host:port".to_owned())?;
    if let Some(username) = username {
        url.set_username(username)
            .map_err(|()| "cannot carry a username".to_owned())?;
    }
    if password.is_some() {
        url.set_password(password)
            .map_err(|()| "cannot carry a password".to_owned())?;
    }
    Ok(url)
}

/// A URL's userinfo part as the text it stands for (`p%40ss` is `p@ss`).
fn decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SentinelConfig {
        SentinelConfig {
            sentinels: vec!["127.0.0.1:26379".into()],
            master_service: "mymaster".into(),
            sentinel_username: None,
            sentinel_password: Some("sentinel-secret".into()),
            master_username: None,
            master_password: None,
        }
    }

    #[test]
    fn passwords_never_show() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("sentinel-secret") && shown.contains("<redacted>"));
    }

    #[test]
    fn the_master_takes_the_queue_url_s_credentials_unless_its_own_are_set() {
        let config = config();
        let client = config
            .master_client("redis://default:p%40ss+1@old:6379", "10.0.0.2", 6380)
            .expect("a client");
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().password(), Some("p@ss+1"));
        let own = SentinelConfig {
            master_password: Some("mine".into()),
            ..config
        };
        let client = own
            .master_client("redis://default:old@old:6379", "10.0.0.2", 6380)
            .expect("a client");
        assert_eq!(
            client.get_connection_info().redis_settings().password(),
            Some("mine")
        );
    }
}
