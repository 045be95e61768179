//! Telling every instance that a key changed: a Redis pub/sub channel
//! carrying the key's prefix (`*`: forget everything, after a team change).
//! Each instance subscribes and drops its cached entry; the cache's short
//! TTL bounds how stale an entry can get while Redis is away.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use super::VirtualKeys;

/// The channel every instance listens on.
pub const CHANNEL: &str = "sluice:keys:changed";
/// The message that clears every cached key.
pub const EVERYTHING: &str = "*";
const OP_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// The publishing side (and the client the subscriber connects with).
#[derive(Clone)]
pub struct Broadcast {
    client: redis::Client,
    conn: ConnectionManager,
}

impl std::fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Broadcast(redis)")
    }
}

impl Broadcast {
    /// Connects lazily: Redis being down at start is not an error (the TTL
    /// covers it).
    pub fn new(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(Self { client, conn })
    }

    /// Tells every instance; a failure is logged (their TTL still expires
    /// the entry).
    pub async fn publish(&self, prefix: &str) {
        let mut conn = self.conn.clone();
        let sent = tokio::time::timeout(
            OP_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(prefix)
                .query_async::<i64>(&mut conn),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, prefix, "cannot broadcast a key change; other instances see it when their cache entry expires"),
            Err(_) => tracing::warn!(prefix, "broadcasting a key change timed out; other instances see it when their cache entry expires"),
        }
    }
}

/// Listens until shutdown, reconnecting; every (re)subscription first
/// forgets the whole cache, since changes may have been missed meanwhile.
pub async fn listen(keys: Arc<VirtualKeys>, broadcast: Broadcast, shutdown: CancellationToken) {
    let mut warned = false;
    loop {
        let subscribed = async {
            let mut pubsub = broadcast.client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let subscribed = tokio::select! {
            () = shutdown.cancelled() => return,
            s = tokio::time::timeout(OP_TIMEOUT * 3, subscribed) => s,
        };
        match subscribed {
            Ok(Ok(pubsub)) => {
                keys.forget_all();
                keys.subscribed.store(true, Ordering::Relaxed);
                if warned {
                    tracing::info!("key invalidations flow through Redis again");
                }
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        msg = messages.next() => match msg {
                            Some(msg) => match msg.get_payload::<String>() {
                                Ok(p) => keys.heard(&p),
                                Err(_) => keys.forget_all(),
                            },
                            None => break,
                        },
                    }
                }
                keys.subscribed.store(false, Ordering::Relaxed);
                tracing::warn!("lost the Redis subscription for key invalidations; reconnecting (cached keys expire by TTL meanwhile)");
                warned = true;
            }
            Ok(Err(e)) if !warned => {
                tracing::warn!(error = %e, "cannot subscribe to key invalidations on Redis; cached keys expire by TTL until it answers");
                warned = true;
            }
            Err(_) if !warned => {
                tracing::warn!("subscribing to key invalidations on Redis timed out; cached keys expire by TTL until it answers");
                warned = true;
            }
            _ => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_EVERY) => {}
        }
    }
}
