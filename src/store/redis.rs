//! The Redis backend, for state shared by several gateway instances.
//!
//! Every key starts with the store's key prefix (e.g. `spgate:`), so one Redis can serve several
//! deployments. The layout, with `P` standing for the prefix (`P seller:A1` is the key
//! `spgate:seller:A1` under the prefix `spgate:`):
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `P seller:<selling partner id>` | hash | one [`SellerRecord`] |
//! | `P sellers` | sorted set, all scores 0 | seller ids, listed in byte order |
//! | `P client:<id>` | hash | one [`ClientRecord`] |
//! | `P client-by-key:<key hash>` | string | the client id for an API key hash |
//! | `P clients` | sorted set, score `created_at` | client ids, listed by creation then id |
//! | `P drop-in:<lwa client id>` | hash | one [`DropInRecord`] |
//! | `P gateway-token:<token hash>` | hash, with a TTL | one [`GatewayToken`] |
//! | `P gateway-tokens` | sorted set, score `expires_at` | token hashes, to purge expired ones |
//! | `P lwa:token:<subject>` | string, with a TTL | a sealed LWA access token |
//! | `P lwa:lock:<subject>` | string, with a TTL | the random token of a refresh lock holder |
//!
//! The vault's keys (data keys, retention records, the PII cache, pseudonyms) live under
//! `P vault:`; see `redis_retention.rs`.
//!
//! Writes that touch several keys or must not overwrite run as Lua scripts, which Redis executes
//! atomically: two instances inserting the same client id at once get one success and one
//! [`StoreError::Conflict`], never a half-written record. The scripts build a few key names from
//! the prefix (purging expired gateway tokens), so this backend targets a single Redis (or one
//! behind Sentinel), not Redis Cluster.
//!
//! Values reach this module already sealed or hashed; error messages carry neither values nor
//! the URL (which may hold a password).

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script};

use super::token_cache::SharedTokenCache;
use super::{
    CacheEntry, ClientRecord, DropInRecord, GatewayToken, Invite, KeyCreation, OAuthState,
    OrderKey, RetentionRecord, RetentionStats, SellerRecord, SellerStatus, Shredded, Store,
    StoreError,
};

#[path = "redis_retention.rs"]
mod retention;

/// Wall-clock unix seconds (for TTLs of records that carry absolute expiry times).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How long [`RedisStore::connect`] waits for a first answer from Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long any one command may wait for its answer before failing.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Reconnection attempts after a dropped connection, before the waiting command fails (the next
/// command starts over).
const RECONNECT_RETRIES: usize = 3;

/// Upper bound of the backoff between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The longest TTL given to a key (Redis rejects expiry times past the year 292 million).
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Expired gateway tokens purged per insert at most, so one insert never runs long.
const PURGE_BATCH: u32 = 1000;

/// Redis-backed [`Store`] and [`SharedTokenCache`]. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
}

/// `KEYS`: client, client-by-key, clients index. `ARGV`: id, created_at, then field/value pairs.
/// Returns 0 when inserted, 1 if the id exists, 2 if the key hash exists.
static INSERT_CLIENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
        if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
        redis.call('HSET', KEYS[1], unpack(ARGV, 3))
        redis.call('SET', KEYS[2], ARGV[1])
        redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
        return 0
        ",
    )
});

/// `KEYS`: client. `ARGV`: revocation time. Returns 1 if revoked now, 0 if absent or revoked.
static REVOKE_CLIENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        return redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
        ",
    )
});

/// `KEYS`: seller. `ARGV`: status. Returns 1 if set, 0 if there is no such seller.
static SET_SELLER_STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        redis.call('HSET', KEYS[1], 'status', ARGV[1])
        return 1
        ",
    )
});

/// `KEYS`: seller, sellers index. `ARGV`: id, then field/value pairs. Inserts only a new
/// seller: returns 1 when inserted, 0 if the seller exists.
static INSERT_SELLER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        local id = ARGV[1]
        redis.call('HSET', KEYS[1], unpack(ARGV, 2))
        redis.call('ZADD', KEYS[2], 0, id)
        return 1
        ",
    )
});

/// `KEYS`: invite. `ARGV`: used_at. Marks an unused invite used, keeping its TTL. Returns 1 if
/// it did, 0 if the invite is unknown or already used.
static USE_INVITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local raw = redis.call('GET', KEYS[1])
        if not raw then return 0 end
        local invite = cjson.decode(raw)
        if invite.used_at ~= nil and invite.used_at ~= cjson.null then return 0 end
        invite.used_at = tonumber(ARGV[1])
        redis.call('SET', KEYS[1], cjson.encode(invite), 'KEEPTTL')
        return 1
        ",
    )
});

/// `KEYS`: drop-in, its client. `ARGV`: field/value pairs. Returns 0 when inserted, 1 if the
/// drop-in id exists, 2 if the client does not.
static INSERT_DROP_IN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
        if redis.call('EXISTS', KEYS[2]) == 0 then return 2 end
        redis.call('HSET', KEYS[1], unpack(ARGV))
        return 0
        ",
    )
});

/// `KEYS`: token, tokens index. `ARGV`: now, expires_at, ttl in ms, token hash, token key
/// prefix, purge batch, then field/value pairs. Purges tokens expired at `now`, then inserts
/// unless the token is already expired. Returns 0 when done, 1 if the hash exists.
static INSERT_GATEWAY_TOKEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[6])
        for _, hash in ipairs(expired) do
            redis.call('DEL', ARGV[5] .. hash)
            redis.call('ZREM', KEYS[2], hash)
        end
        if tonumber(ARGV[3]) <= 0 then return 0 end
        if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
        redis.call('HSET', KEYS[1], unpack(ARGV, 7))
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
        redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
        return 0
        ",
    )
});

/// `KEYS`: lock. `ARGV`: lock token. Deletes the lock only if it holds that token.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0
        ",
    )
});

// === impl RedisStore ===

impl RedisStore {
    /// Connects to Redis at `url` (`redis://[[user]:password@]host[:port][/db]`) and checks
    /// that it answers, within [`CONNECT_TIMEOUT`]. Every key the store touches starts with
    /// `key_prefix`. The connection reconnects on its own after Redis restarts.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<RedisStore, StoreError> {
        Self::connect_with(url, &crate::config::RedisAccess::default(), key_prefix).await
    }

    /// [`RedisStore::connect`] with TLS roots (`rediss://`) and an ACL user from `access`.
    pub async fn connect_with(
        url: &str,
        access: &crate::config::RedisAccess,
        key_prefix: &str,
    ) -> Result<RedisStore, StoreError> {
        let client = access
            .client(url)
            .map_err(|e| StoreError::RedisUrl(describe(&e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(MAX_RECONNECT_DELAY);
        let connect = async {
            let mut conn = ConnectionManager::new_with_config(client, config).await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| StoreError::Redis {
                op: "connect",
                reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(failed("connect"))?;
        Ok(RedisStore {
            conn,
            prefix: key_prefix.to_string(),
        })
    }

    /// Counts a write that changes who may do what (tools, sellers), after it is done, so every
    /// instance's cache drops what it holds at its next lookup ([`Store::access_version`]).
    async fn bump_access_version(&self, op: &'static str) -> Result<(), StoreError> {
        redis::cmd("INCR")
            .arg(self.index("access-version"))
            .exec_async(&mut self.conn())
            .await
            .map_err(failed(op))
    }

    /// The prefix of every key this store touches.
    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix><kind>:<id>`.
    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// `<prefix><name>`, for index keys.
    fn index(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn hgetall(&self, key: String, op: &'static str) -> Result<Fields, StoreError> {
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.conn())
            .await
            .map_err(failed(op))
    }

    /// The hashes at `keys`, in order, in one round trip (an empty map for a missing key).
    async fn hgetall_many(
        &self,
        keys: impl IntoIterator<Item = String>,
        op: &'static str,
    ) -> Result<Vec<Fields>, StoreError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGETALL").arg(key);
        }
        pipe.query_async(&mut self.conn()).await.map_err(failed(op))
    }

    async fn zrange(&self, index: &str, op: &'static str) -> Result<Vec<String>, StoreError> {
        redis::cmd("ZRANGE")
            .arg(self.index(index))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .map_err(failed(op))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection's own Debug prints the connection info, which may hold a password.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn put_seller(&self, seller: &SellerRecord) -> Result<(), StoreError> {
        let id = &seller.selling_partner_id;
        let key = self.key("seller", id);
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg(seller_fields(seller))
            .ignore()
            .cmd("ZADD")
            .arg(self.index("sellers"))
            .arg(0)
            .arg(id)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(failed("put_seller"))?;
        self.bump_access_version("put_seller").await
    }

    async fn insert_seller(&self, seller: &SellerRecord) -> Result<(), StoreError> {
        let id = &seller.selling_partner_id;
        let inserted: i64 = INSERT_SELLER
            .key(self.key("seller", id))
            .key(self.index("sellers"))
            .arg(id)
            .arg(seller_fields(seller))
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("insert_seller"))?;
        match inserted {
            1 => self.bump_access_version("insert_seller").await,
            _ => Err(StoreError::Conflict(format!("seller {id}"))),
        }
    }

    async fn seller(&self, selling_partner_id: &str) -> Result<Option<SellerRecord>, StoreError> {
        let fields = self
            .hgetall(self.key("seller", selling_partner_id), "seller")
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        seller_from(selling_partner_id, &fields).map(Some)
    }

    async fn sellers(&self) -> Result<Vec<SellerRecord>, StoreError> {
        let ids = self.zrange("sellers", "sellers").await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let all = self
            .hgetall_many(ids.iter().map(|id| self.key("seller", id)), "sellers")
            .await?;
        ids.iter()
            .zip(&all)
            // Removed between the two round trips.
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(id, fields)| seller_from(id, fields))
            .collect()
    }

    async fn remove_seller(&self, selling_partner_id: &str) -> Result<bool, StoreError> {
        let (deleted, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.key("seller", selling_partner_id))
            .cmd("ZREM")
            .arg(self.index("sellers"))
            .arg(selling_partner_id)
            .query_async(&mut self.conn())
            .await
            .map_err(failed("remove_seller"))?;
        if deleted > 0 {
            self.bump_access_version("remove_seller").await?;
        }
        Ok(deleted > 0)
    }

    async fn set_seller_status(
        &self,
        selling_partner_id: &str,
        status: SellerStatus,
    ) -> Result<bool, StoreError> {
        let set: i64 = SET_SELLER_STATUS
            .key(self.key("seller", selling_partner_id))
            .arg(status.as_str())
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("set_seller_status"))?;
        if set == 1 {
            self.bump_access_version("set_seller_status").await?;
        }
        Ok(set == 1)
    }

    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let outcome: i64 = INSERT_CLIENT
            .key(self.key("client", &client.id))
            .key(self.key("client-by-key", &client.key_hash))
            .key(self.index("clients"))
            .arg(&client.id)
            .arg(client.created_at)
            .arg(client_fields(client))
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("insert_client"))?;
        match outcome {
            0 => self.bump_access_version("insert_client").await,
            1 => Err(StoreError::Conflict(format!("client {}", client.id))),
            2 => Err(StoreError::Conflict("a client with this key hash".into())),
            n => Err(unexpected("insert_client", n)),
        }
    }

    async fn client_by_key_hash(&self, key_hash: &str) -> Result<Option<ClientRecord>, StoreError> {
        let id: Option<String> = redis::cmd("GET")
            .arg(self.key("client-by-key", key_hash))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("client_by_key_hash"))?;
        match id {
            Some(id) => self.client(&id).await,
            None => Ok(None),
        }
    }

    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let ids = self.zrange("clients", "clients").await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let all = self
            .hgetall_many(ids.iter().map(|id| self.key("client", id)), "clients")
            .await?;
        ids.iter()
            .zip(&all)
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(id, fields)| client_from(id, fields))
            .collect()
    }

    async fn revoke_client(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let revoked: i64 = REVOKE_CLIENT
            .key(self.key("client", id))
            .arg(at)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("revoke_client"))?;
        if revoked == 1 {
            self.bump_access_version("revoke_client").await?;
        }
        Ok(revoked == 1)
    }

    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let fields = self.hgetall(self.key("client", id), "client").await?;
        if fields.is_empty() {
            return Ok(None);
        }
        client_from(id, &fields).map(Some)
    }

    async fn insert_drop_in(&self, record: &DropInRecord) -> Result<(), StoreError> {
        let outcome: i64 = INSERT_DROP_IN
            .key(self.key("drop-in", &record.lwa_client_id))
            .key(self.key("client", &record.client_id))
            .arg(&[
                ("secret_hash", record.secret_hash.as_str()),
                ("refresh_hash", record.refresh_hash.as_str()),
                ("client_id", record.client_id.as_str()),
                ("seller", record.seller.as_str()),
            ])
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("insert_drop_in"))?;
        match outcome {
            0 => Ok(()),
            // Like the embedded store, whose foreign key turns an unknown client into a
            // constraint violation.
            1 | 2 => Err(StoreError::Conflict(format!(
                "drop-in client {}",
                record.lwa_client_id
            ))),
            n => Err(unexpected("insert_drop_in", n)),
        }
    }

    async fn insert_invite(&self, invite: &Invite) -> Result<(), StoreError> {
        let json = serde_json::to_string(invite).map_err(|e| corrupt("invite")(e.to_string()))?;
        // Kept a month past expiry, so a late click still finds "expired", not "unknown".
        let keep = (invite.expires_at - invite.created_at).max(1) + 30 * 86_400;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key("invite", &invite.id))
            .arg(json)
            .arg("NX")
            .arg("EX")
            .arg(keep)
            .query_async(&mut self.conn())
            .await
            .map_err(failed("insert_invite"))?;
        set.map(|_| ())
            .ok_or_else(|| StoreError::Conflict("invite".into()))
    }

    async fn invite(&self, id: &str) -> Result<Option<Invite>, StoreError> {
        let json: Option<String> = redis::cmd("GET")
            .arg(self.key("invite", id))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("invite"))?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| corrupt("invite")(e.to_string())))
            .transpose()
    }

    async fn use_invite(&self, id: &str, at: i64) -> Result<bool, StoreError> {
        let used: i64 = USE_INVITE
            .key(self.key("invite", id))
            .arg(at)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("use_invite"))?;
        Ok(used == 1)
    }

    async fn insert_oauth_state(&self, state: &OAuthState) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(state).map_err(|e| corrupt("oauth state")(e.to_string()))?;
        // The TTL only collects garbage; expiry is checked against the caller's `now` on take.
        let ttl_ms = ((state.expires_at - unix_now()).max(0) + 60) * 1000;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key("oauth-state", &state.state_hash))
            .arg(json)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.conn())
            .await
            .map_err(failed("insert_oauth_state"))?;
        set.map(|_| ())
            .ok_or_else(|| StoreError::Conflict("oauth state".into()))
    }

    async fn take_oauth_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<OAuthState>, StoreError> {
        // GETDEL is the single use: concurrent callbacks with one state get it once.
        let json: Option<String> = redis::cmd("GETDEL")
            .arg(self.key("oauth-state", state_hash))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("take_oauth_state"))?;
        let state: Option<OAuthState> = json
            .map(|j| serde_json::from_str(&j).map_err(|e| corrupt("oauth state")(e.to_string())))
            .transpose()?;
        Ok(state.filter(|s| s.expires_at > now))
    }

    async fn drop_in(&self, lwa_client_id: &str) -> Result<Option<DropInRecord>, StoreError> {
        let fields = self
            .hgetall(self.key("drop-in", lwa_client_id), "drop_in")
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |name| text(&fields, "drop-in", name);
        Ok(Some(DropInRecord {
            lwa_client_id: lwa_client_id.to_string(),
            secret_hash: get("secret_hash")?,
            refresh_hash: get("refresh_hash")?,
            client_id: get("client_id")?,
            seller: get("seller")?,
        }))
    }

    async fn insert_gateway_token(&self, token: &GatewayToken, now: i64) -> Result<(), StoreError> {
        // The TTL runs on the caller's clock: `expires_at - now` from now on.
        let ttl_ms = u64::try_from(token.expires_at.saturating_sub(now))
            .unwrap_or(0)
            .saturating_mul(1000)
            .min(MAX_TTL_MS);
        let outcome: i64 = INSERT_GATEWAY_TOKEN
            .key(self.key("gateway-token", &token.token_hash))
            .key(self.index("gateway-tokens"))
            .arg(now)
            .arg(token.expires_at)
            .arg(ttl_ms)
            .arg(&token.token_hash)
            .arg(self.key("gateway-token", ""))
            .arg(PURGE_BATCH)
            .arg("client_id")
            .arg(&token.client_id)
            .arg("seller")
            .arg(&token.seller)
            .arg("expires_at")
            .arg(token.expires_at)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("insert_gateway_token"))?;
        match outcome {
            0 => Ok(()),
            1 => Err(StoreError::Conflict(
                "a gateway token with this hash".into(),
            )),
            n => Err(unexpected("insert_gateway_token", n)),
        }
    }

    async fn gateway_token(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<GatewayToken>, StoreError> {
        let fields = self
            .hgetall(self.key("gateway-token", token_hash), "gateway_token")
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let token = GatewayToken {
            token_hash: token_hash.to_string(),
            client_id: text(&fields, "gateway token", "client_id")?,
            seller: text(&fields, "gateway token", "seller")?,
            expires_at: integer(&fields, "gateway token", "expires_at")?,
        };
        Ok((token.expires_at > now).then_some(token))
    }

    async fn order_key(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<OrderKey>, StoreError> {
        self.v_order_key(seller, order_id).await
    }

    async fn order_key_by_id(&self, key_id: &str) -> Result<Option<OrderKey>, StoreError> {
        self.v_order_key_by_id(key_id).await
    }

    async fn create_order_key(
        &self,
        key: &OrderKey,
        record: &RetentionRecord,
    ) -> Result<KeyCreation, StoreError> {
        self.v_create_order_key(key, record).await
    }

    async fn retention(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<RetentionRecord>, StoreError> {
        self.v_retention(seller, order_id).await
    }

    async fn retention_by_order(&self, order_id: &str) -> Result<Vec<RetentionRecord>, StoreError> {
        self.v_retention_by_order(order_id).await
    }

    async fn put_retention(&self, record: &RetentionRecord) -> Result<bool, StoreError> {
        self.v_put_retention(record).await
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<RetentionRecord>, StoreError> {
        self.v_due(now, limit).await
    }

    async fn shred_order(
        &self,
        tombstone: &RetentionRecord,
    ) -> Result<Option<Shredded>, StoreError> {
        self.v_shred_order(tombstone).await
    }

    async fn retention_stats(&self, now: i64, next: usize) -> Result<RetentionStats, StoreError> {
        self.v_retention_stats(now, next).await
    }

    async fn put_cached(&self, entry: &CacheEntry) -> Result<bool, StoreError> {
        self.v_put_cached(entry).await
    }

    async fn cached(
        &self,
        seller: &str,
        cache_id: &str,
        now: i64,
    ) -> Result<Option<CacheEntry>, StoreError> {
        self.v_cached(seller, cache_id, now).await
    }

    async fn cached_by_order(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<CacheEntry>, StoreError> {
        self.v_cached_by_order(seller, order_id).await
    }

    async fn purge_expired_cache(&self, _now: i64) -> Result<u64, StoreError> {
        // Entries carry a TTL: Redis removes them itself.
        Ok(0)
    }

    async fn link_pseudonym(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
    ) -> Result<bool, StoreError> {
        self.v_link_pseudonym(seller, order_id, pseudonym).await
    }

    async fn orders_by_pseudonym(
        &self,
        pseudonym: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.v_orders_by_pseudonym(pseudonym).await
    }

    async fn pseudonyms_of(&self, seller: &str, order_id: &str) -> Result<Vec<String>, StoreError> {
        self.v_pseudonyms_of(seller, order_id).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A write, so a Redis that answers but refuses writes (READONLY replica, OOM, an ACL
        // user without write permission) is unready too.
        redis::cmd("SET")
            .arg(self.index("readyz"))
            .arg(1)
            .arg("PX")
            .arg(10_000)
            .exec_async(&mut self.conn())
            .await
            .map_err(failed("ping"))
    }

    async fn access_version(&self) -> Result<u64, StoreError> {
        let v: Option<u64> = redis::cmd("GET")
            .arg(self.index("access-version"))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("access_version"))?;
        Ok(v.unwrap_or(0))
    }

    async fn compact(&self) -> Result<(), StoreError> {
        // DEL removes values from the keyspace at once; nothing else to do.
        Ok(())
    }
}

#[async_trait]
impl SharedTokenCache for RedisStore {
    async fn get(&self, subject_key: &str) -> Result<Option<(String, Duration)>, StoreError> {
        let key = self.key("lwa:token", subject_key);
        // MULTI: the value and its TTL are read at the same instant.
        let (sealed, ttl_ms): (Option<String>, i64) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&key)
            .cmd("PTTL")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(failed("token_cache.get"))?;
        // PTTL is -2 for a missing key and -1 for one without expiry, which `put` never writes:
        // such a token is treated as absent so the caller refreshes and replaces it.
        match (sealed, u64::try_from(ttl_ms)) {
            (Some(sealed), Ok(ms)) if ms > 0 => Ok(Some((sealed, Duration::from_millis(ms)))),
            _ => Ok(None),
        }
    }

    async fn put(&self, subject_key: &str, sealed: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = self.key("lwa:token", subject_key);
        let ms = ttl_millis(ttl);
        let cmd = if ms == 0 {
            // Nothing left to cache; an older token must not outlive this call either.
            redis::cmd("DEL").arg(&key).clone()
        } else {
            redis::cmd("SET")
                .arg(&key)
                .arg(sealed)
                .arg("PX")
                .arg(ms)
                .clone()
        };
        cmd.exec_async(&mut self.conn())
            .await
            .map_err(failed("token_cache.put"))
    }

    async fn try_lock(
        &self,
        subject_key: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let token = crate::crypto::random_token::<18>().map_err(StoreError::LockToken)?;
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.key("lwa:lock", subject_key))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_millis(ttl).max(1))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("token_cache.try_lock"))?;
        Ok(taken.map(|_| token))
    }

    async fn unlock(&self, subject_key: &str, lock_token: &str) -> Result<(), StoreError> {
        UNLOCK
            .key(self.key("lwa:lock", subject_key))
            .arg(lock_token)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map_err(failed("token_cache.unlock"))?;
        Ok(())
    }
}

/// A record as stored: field name to value.
type Fields = HashMap<String, String>;

fn seller_fields(s: &SellerRecord) -> Vec<(&'static str, String)> {
    vec![
        ("region", s.region.as_str().to_string()),
        ("marketplaces", list_value(&s.marketplaces)),
        ("refresh_token_sealed", s.refresh_token_sealed.clone()),
        ("authorized_at", s.authorized_at.to_string()),
        ("reauthorize_by", s.reauthorize_by.to_string()),
        ("status", s.status.as_str().to_string()),
    ]
}

fn seller_from(id: &str, f: &Fields) -> Result<SellerRecord, StoreError> {
    const WHAT: &str = "seller";
    Ok(SellerRecord {
        selling_partner_id: id.to_string(),
        region: text(f, WHAT, "region")?.parse().map_err(corrupt(WHAT))?,
        marketplaces: list(f, WHAT, "marketplaces")?,
        refresh_token_sealed: text(f, WHAT, "refresh_token_sealed")?,
        authorized_at: integer(f, WHAT, "authorized_at")?,
        reauthorize_by: integer(f, WHAT, "reauthorize_by")?,
        status: text(f, WHAT, "status")?.parse().map_err(corrupt(WHAT))?,
    })
}

fn client_fields(c: &ClientRecord) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("tool", c.tool.clone()),
        ("role", c.role.clone()),
        ("sellers", list_value(&c.sellers)),
        ("key_hash", c.key_hash.clone()),
        ("key_prefix", c.key_prefix.clone()),
        ("created_at", c.created_at.to_string()),
    ];
    if let Some(at) = c.revoked_at {
        fields.push(("revoked_at", at.to_string()));
    }
    fields
}

fn client_from(id: &str, f: &Fields) -> Result<ClientRecord, StoreError> {
    const WHAT: &str = "client";
    Ok(ClientRecord {
        id: id.to_string(),
        tool: text(f, WHAT, "tool")?,
        role: text(f, WHAT, "role")?,
        sellers: list(f, WHAT, "sellers")?,
        key_hash: text(f, WHAT, "key_hash")?,
        key_prefix: text(f, WHAT, "key_prefix")?,
        created_at: integer(f, WHAT, "created_at")?,
        revoked_at: match f.get("revoked_at") {
            Some(_) => Some(integer(f, WHAT, "revoked_at")?),
            None => None,
        },
    })
}

/// Lists are stored as JSON arrays of strings, so any character may appear in an element.
fn list_value(items: &[String]) -> String {
    serde_json::Value::from(items).to_string()
}

fn text(f: &Fields, what: &'static str, name: &str) -> Result<String, StoreError> {
    f.get(name).cloned().ok_or_else(|| StoreError::Corrupt {
        what,
        detail: format!("field {name} is missing"),
    })
}

fn integer(f: &Fields, what: &'static str, name: &str) -> Result<i64, StoreError> {
    text(f, what, name)?
        .parse()
        .map_err(|_| StoreError::Corrupt {
            what,
            detail: format!("field {name} is not an integer"),
        })
}

fn list(f: &Fields, what: &'static str, name: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&text(f, what, name)?).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("field {name} is not a JSON list of strings"),
    })
}

fn corrupt(what: &'static str) -> impl FnOnce(String) -> StoreError {
    move |detail| StoreError::Corrupt { what, detail }
}

/// A duration in whole milliseconds, capped at [`MAX_TTL_MS`].
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_TTL_MS)
}

/// Maps a Redis error to [`StoreError::Redis`] for operation `op`.
fn failed(op: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |e| StoreError::Redis {
        op,
        reason: describe(&e),
    }
}

fn unexpected(op: &'static str, outcome: i64) -> StoreError {
    StoreError::Redis {
        op,
        reason: format!("script answered an unexpected {outcome}"),
    }
}

/// What went wrong, without values: a type error's message quotes the response (which may be a
/// sealed token), and a server error for an unknown command quotes its arguments.
pub(crate) fn describe(e: &RedisError) -> String {
    match e.kind() {
        // Refused, reset, timed out: the OS error text carries no values.
        ErrorKind::Io => e.to_string(),
        ErrorKind::Server(_) | ErrorKind::Extension => match e.code() {
            Some(code) => format!("server answered {code} ({})", e.category()),
            None => e.category().to_string(),
        },
        _ => e.category().to_string(),
    }
}

#[cfg(test)]
#[path = "redis_tests.rs"]
mod tests;
