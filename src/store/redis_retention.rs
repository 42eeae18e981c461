//! The vault's keys in the Redis store. With `P` the key prefix and `<pair>` a (seller, order)
//! pair written `seller:order` (each part escaping `%` and `:`):
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `P vault:key:<key id>` | hash | one [`OrderKey`] |
//! | `P vault:key-of:<pair>` | string | the order's key id |
//! | `P vault:keys` | set | live key ids (counted by the report) |
//! | `P vault:rec:<pair>` | hash `v`, `json` | one [`RetentionRecord`] and its version |
//! | `P vault:due` | sorted set, score `purge_at` | pairs not yet deleted |
//! | `P vault:state:<state>` | set | pairs per state (counted by the report) |
//! | `P vault:by-order:<order id>` | set | sellers with a record of that order |
//! | `P vault:cache:<seller>:<cache id>` | hash, with a TTL | one [`CacheEntry`] |
//! | `P vault:cache-of:<pair>` | set | cache ids of the order |
//! | `P vault:psn:<pseudonym>` | set | pairs linked to a buyer pseudonym |
//! | `P vault:psn-of:<pair>` | set | pseudonyms linked to the order |
//!
//! Every write is one Lua script, so it is atomic and conditional (on a record's version, or on
//! the order's key still existing): N instances may write and run deletion passes at once.
//! Deletion uses `DEL`: the values leave the keyspace and their memory is freed at once.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::Script;

use super::{failed, unexpected, RedisStore, MAX_TTL_MS};
use crate::store::retention::{record_from, record_json};
use crate::store::{
    CacheEntry, KeyCreation, OrderKey, RetentionRecord, RetentionState, RetentionStats, Shredded,
    StoreError,
};

/// Lua: writes a record if its stored version is `expected`; keeps the state sets, the due
/// index and the by-order index in step. Returns true when written.
const WRITE_REC: &str = r"
local function write_rec(rec, due, by_order, states, pair, seller, expected, json, state, purge)
    local cur = tonumber(redis.call('HGET', rec, 'v') or '0')
    if cur ~= tonumber(expected) then return false end
    redis.call('HSET', rec, 'v', cur + 1, 'json', json)
    redis.call('SREM', states .. 'active', pair)
    redis.call('SREM', states .. 'held', pair)
    redis.call('SREM', states .. 'deleted', pair)
    redis.call('SADD', states .. state, pair)
    if state == 'deleted' then
        redis.call('ZREM', due, pair)
    else
        redis.call('ZADD', due, purge, pair)
    end
    redis.call('SADD', by_order, seller)
    return true
end
";

/// `KEYS`: rec, due, by-order. `ARGV`: states prefix, pair, seller, expected, json, state,
/// purge_at. Returns 1 if written, 0 on a version conflict.
static PUT_RETENTION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{WRITE_REC}
        if write_rec(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
            ARGV[6], ARGV[7]) then return 1 end
        return 0"
    ))
});

/// `KEYS`: rec, due, by-order, key-of, key, keys set. `ARGV`: states prefix, pair, seller,
/// expected, json, state, purge_at, key id, order id, wrapped, created_at. Returns `{0}` when
/// created, `{1, key id}` if the order has a key, `{2}` on a version conflict.
static CREATE_ORDER_KEY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{WRITE_REC}
        local existing = redis.call('GET', KEYS[4])
        if existing then return {{1, existing}} end
        if not write_rec(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
            ARGV[6], ARGV[7]) then return {{2}} end
        redis.call('SET', KEYS[4], ARGV[8])
        redis.call('HSET', KEYS[5], 'seller', ARGV[3], 'order_id', ARGV[9], 'wrapped', ARGV[10],
            'created_at', ARGV[11])
        redis.call('SADD', KEYS[6], ARGV[8])
        return {{0}}"
    ))
});

/// `KEYS`: rec, due, by-order, key-of, keys set, cache-of, psn-of. `ARGV`: states prefix, pair,
/// seller, expected, json, purge_at, key prefix, cache prefix (with the seller), pseudonym
/// prefix, order id. Returns `{-1}` on a version conflict, else `{key id or '', cache entries,
/// pseudonyms}`.
static SHRED_ORDER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{WRITE_REC}
        local cur = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
        if cur ~= tonumber(ARGV[4]) then return {{-1}} end
        local kid = redis.call('GET', KEYS[4])
        if kid then
            redis.call('DEL', ARGV[7] .. kid, KEYS[4])
            redis.call('SREM', KEYS[5], kid)
        else
            kid = ''
        end
        local entries = 0
        for _, id in ipairs(redis.call('SMEMBERS', KEYS[6])) do
            local k = ARGV[8] .. id
            if redis.call('HGET', k, 'order_id') == ARGV[10] then
                entries = entries + redis.call('DEL', k)
            end
        end
        redis.call('DEL', KEYS[6])
        local psns = 0
        for _, psn in ipairs(redis.call('SMEMBERS', KEYS[7])) do
            psns = psns + redis.call('SREM', ARGV[9] .. psn, ARGV[2])
        end
        redis.call('DEL', KEYS[7])
        write_rec(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5],
            'deleted', ARGV[6])
        return {{kid, entries, psns}}"
    ))
});

/// `KEYS`: key-of, cache entry, cache-of. `ARGV`: key id, order id, sealed, stored_at,
/// expires_at, ttl ms, cache id. Returns 1 if stored, 0 if the order's key is not `key id`.
static PUT_CACHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
        redis.call('DEL', KEYS[2])
        if tonumber(ARGV[6]) <= 0 then return 1 end
        redis.call('HSET', KEYS[2], 'order_id', ARGV[2], 'key_id', ARGV[1], 'sealed', ARGV[3],
            'stored_at', ARGV[4], 'expires_at', ARGV[5])
        redis.call('PEXPIRE', KEYS[2], ARGV[6])
        redis.call('SADD', KEYS[3], ARGV[7])
        return 1
        ",
    )
});

/// `KEYS`: key-of, psn, psn-of. `ARGV`: pair, pseudonym. Returns 1 if linked, 0 if the order
/// has no live key.
static LINK_PSEUDONYM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        redis.call('SADD', KEYS[2], ARGV[1])
        redis.call('SADD', KEYS[3], ARGV[2])
        return 1
        ",
    )
});

/// A (seller, order) pair as one key segment: `seller:order`, each part escaping `%` and `:`.
fn pair(seller: &str, order_id: &str) -> String {
    format!("{}:{}", escape(seller), escape(order_id))
}

fn escape(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A")
}

fn unescape(s: &str) -> String {
    s.replace("%3A", ":").replace("%25", "%")
}

fn unpair(p: &str) -> Result<(String, String), StoreError> {
    let (s, o) = p.split_once(':').ok_or_else(|| StoreError::Corrupt {
        what: "vault index",
        detail: "a member is not a (seller, order) pair".into(),
    })?;
    Ok((unescape(s), unescape(o)))
}

/// A cache entry's fields as stored (the sealed bytes are binary).
type RawFields = HashMap<String, Vec<u8>>;

fn raw_text(f: &RawFields, name: &str) -> Result<String, StoreError> {
    f.get(name)
        .and_then(|v| String::from_utf8(v.clone()).ok())
        .ok_or_else(|| StoreError::Corrupt {
            what: "cache entry",
            detail: format!("field {name} is missing or not text"),
        })
}

fn raw_int(f: &RawFields, name: &str) -> Result<i64, StoreError> {
    raw_text(f, name)?.parse().map_err(|_| StoreError::Corrupt {
        what: "cache entry",
        detail: format!("field {name} is not an integer"),
    })
}

fn cache_from(seller: &str, cache_id: &str, f: &RawFields) -> Result<CacheEntry, StoreError> {
    Ok(CacheEntry {
        seller: seller.to_string(),
        cache_id: cache_id.to_string(),
        order_id: raw_text(f, "order_id")?,
        key_id: raw_text(f, "key_id")?,
        sealed: f
            .get("sealed")
            .cloned()
            .ok_or_else(|| StoreError::Corrupt {
                what: "cache entry",
                detail: "field sealed is missing".into(),
            })?,
        stored_at: raw_int(f, "stored_at")?,
        expires_at: raw_int(f, "expires_at")?,
    })
}

// === impl RedisStore ===

impl RedisStore {
    fn vkey(&self, kind: &str, id: &str) -> String {
        format!("{}vault:{kind}:{id}", self.prefix)
    }

    fn vindex(&self, name: &str) -> String {
        format!("{}vault:{name}", self.prefix)
    }

    fn states_prefix(&self) -> String {
        self.vkey("state", "")
    }

    /// The records stored under `pairs`, in order, skipping ones removed meanwhile.
    async fn records(
        &self,
        pairs: &[String],
        op: &'static str,
    ) -> Result<Vec<RetentionRecord>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for p in pairs {
            pipe.cmd("HGET").arg(self.vkey("rec", p)).arg("json");
        }
        let all: Vec<Option<String>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(failed(op))?;
        all.into_iter().flatten().map(|j| record_from(&j)).collect()
    }

    pub(super) async fn v_order_key(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<OrderKey>, StoreError> {
        let id: Option<String> = redis::cmd("GET")
            .arg(self.vkey("key-of", &pair(seller, order_id)))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("order_key"))?;
        match id {
            Some(id) => self.v_order_key_by_id(&id).await,
            None => Ok(None),
        }
    }

    pub(super) async fn v_order_key_by_id(
        &self,
        key_id: &str,
    ) -> Result<Option<OrderKey>, StoreError> {
        let f = self
            .hgetall(self.vkey("key", key_id), "order_key_by_id")
            .await?;
        if f.is_empty() {
            return Ok(None);
        }
        let get = |name| super::text(&f, "order key", name);
        Ok(Some(OrderKey {
            key_id: key_id.to_string(),
            seller: get("seller")?,
            order_id: get("order_id")?,
            wrapped: get("wrapped")?,
            created_at: super::integer(&f, "order key", "created_at")?,
        }))
    }

    pub(super) async fn v_create_order_key(
        &self,
        key: &OrderKey,
        record: &RetentionRecord,
    ) -> Result<KeyCreation, StoreError> {
        let p = pair(&record.seller, &record.order_id);
        let mut stored = record.clone();
        stored.version += 1;
        let (code, existing): (i64, Option<String>) = {
            let reply: Vec<redis::Value> = CREATE_ORDER_KEY
                .key(self.vkey("rec", &p))
                .key(self.vindex("due"))
                .key(self.vkey("by-order", &record.order_id))
                .key(self.vkey("key-of", &pair(&key.seller, &key.order_id)))
                .key(self.vkey("key", &key.key_id))
                .key(self.vindex("keys"))
                .arg(self.states_prefix())
                .arg(&p)
                .arg(&record.seller)
                .arg(record.version)
                .arg(record_json(&stored)?)
                .arg(stored.state.as_str())
                .arg(stored.purge_at())
                .arg(&key.key_id)
                .arg(&key.order_id)
                .arg(&key.wrapped)
                .arg(key.created_at)
                .invoke_async(&mut self.conn())
                .await
                .map_err(failed("create_order_key"))?;
            let code = match reply.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => return Err(unexpected("create_order_key", -1)),
            };
            let existing = match reply.get(1) {
                Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            };
            (code, existing)
        };
        match (code, existing) {
            (0, _) => Ok(KeyCreation::Created),
            (1, Some(id)) => match self.v_order_key_by_id(&id).await? {
                Some(k) => Ok(KeyCreation::Exists(k)),
                // Shredded in between: the caller reads again.
                None => Ok(KeyCreation::Conflict),
            },
            (2, _) => Ok(KeyCreation::Conflict),
            (n, _) => Err(unexpected("create_order_key", n)),
        }
    }

    pub(super) async fn v_retention(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Option<RetentionRecord>, StoreError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.vkey("rec", &pair(seller, order_id)))
            .arg("json")
            .query_async(&mut self.conn())
            .await
            .map_err(failed("retention"))?;
        json.map(|j| record_from(&j)).transpose()
    }

    pub(super) async fn v_retention_by_order(
        &self,
        order_id: &str,
    ) -> Result<Vec<RetentionRecord>, StoreError> {
        let mut sellers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.vkey("by-order", order_id))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("retention_by_order"))?;
        sellers.sort();
        let pairs: Vec<String> = sellers.iter().map(|s| pair(s, order_id)).collect();
        self.records(&pairs, "retention_by_order").await
    }

    pub(super) async fn v_put_retention(
        &self,
        record: &RetentionRecord,
    ) -> Result<bool, StoreError> {
        if record.state == RetentionState::Deleted {
            return Err(StoreError::Corrupt {
                what: "retention record",
                detail: "put_retention cannot delete; use shred_order".into(),
            });
        }
        let p = pair(&record.seller, &record.order_id);
        let mut stored = record.clone();
        stored.version += 1;
        let written: i64 = PUT_RETENTION
            .key(self.vkey("rec", &p))
            .key(self.vindex("due"))
            .key(self.vkey("by-order", &record.order_id))
            .arg(self.states_prefix())
            .arg(&p)
            .arg(&record.seller)
            .arg(record.version)
            .arg(record_json(&stored)?)
            .arg(stored.state.as_str())
            .arg(stored.purge_at())
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("put_retention"))?;
        Ok(written == 1)
    }

    pub(super) async fn v_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<RetentionRecord>, StoreError> {
        let pairs: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.vindex("due"))
            .arg("-inf")
            .arg(now)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await
            .map_err(failed("due"))?;
        self.records(&pairs, "due").await
    }

    pub(super) async fn v_shred_order(
        &self,
        tombstone: &RetentionRecord,
    ) -> Result<Option<Shredded>, StoreError> {
        let (seller, order) = (&tombstone.seller, &tombstone.order_id);
        let p = pair(seller, order);
        let mut stored = tombstone.clone();
        stored.version += 1;
        stored.state = RetentionState::Deleted;
        let reply: Vec<redis::Value> = SHRED_ORDER
            .key(self.vkey("rec", &p))
            .key(self.vindex("due"))
            .key(self.vkey("by-order", order))
            .key(self.vkey("key-of", &p))
            .key(self.vindex("keys"))
            .key(self.vkey("cache-of", &p))
            .key(self.vkey("psn-of", &p))
            .arg(self.states_prefix())
            .arg(&p)
            .arg(seller)
            .arg(tombstone.version)
            .arg(record_json(&stored)?)
            .arg(stored.purge_at())
            .arg(self.vkey("key", ""))
            .arg(self.vkey("cache", &format!("{}:", escape(seller))))
            .arg(self.vkey("psn", ""))
            .arg(order)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("shred_order"))?;
        let int = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => Ok(*n),
            _ => Err(unexpected("shred_order", -2)),
        };
        match reply.first() {
            Some(redis::Value::Int(-1)) => Ok(None),
            Some(redis::Value::BulkString(kid)) => Ok(Some(Shredded {
                key_id: (!kid.is_empty()).then(|| String::from_utf8_lossy(kid).into_owned()),
                cache_entries: int(reply.get(1))? as u64,
                pseudonyms: int(reply.get(2))? as u64,
            })),
            _ => Err(unexpected("shred_order", -3)),
        }
    }

    pub(super) async fn v_retention_stats(
        &self,
        now: i64,
        next: usize,
    ) -> Result<RetentionStats, StoreError> {
        let states = self.states_prefix();
        let (active, held, deleted, overdue, keys, pairs): (u64, u64, u64, u64, u64, Vec<String>) =
            redis::pipe()
                .cmd("SCARD")
                .arg(format!("{states}active"))
                .cmd("SCARD")
                .arg(format!("{states}held"))
                .cmd("SCARD")
                .arg(format!("{states}deleted"))
                .cmd("ZCOUNT")
                .arg(self.vindex("due"))
                .arg("-inf")
                .arg(now)
                .cmd("SCARD")
                .arg(self.vindex("keys"))
                .cmd("ZRANGE")
                .arg(self.vindex("due"))
                .arg(0)
                .arg(next as i64 - 1)
                .query_async(&mut self.conn())
                .await
                .map_err(failed("retention_stats"))?;
        let next = if next == 0 {
            Vec::new()
        } else {
            self.records(&pairs, "retention_stats").await?
        };
        Ok(RetentionStats {
            active,
            held,
            deleted,
            overdue,
            keys,
            next,
        })
    }

    pub(super) async fn v_put_cached(&self, e: &CacheEntry) -> Result<bool, StoreError> {
        let p = pair(&e.seller, &e.order_id);
        // The TTL runs on the caller's clock: `expires_at - stored_at` from now on.
        let ttl_ms = u64::try_from(e.expires_at.saturating_sub(e.stored_at))
            .unwrap_or(0)
            .saturating_mul(1000)
            .min(MAX_TTL_MS);
        let stored: i64 = PUT_CACHED
            .key(self.vkey("key-of", &p))
            .key(self.vkey("cache", &format!("{}:{}", escape(&e.seller), e.cache_id)))
            .key(self.vkey("cache-of", &p))
            .arg(&e.key_id)
            .arg(&e.order_id)
            .arg(&e.sealed[..])
            .arg(e.stored_at)
            .arg(e.expires_at)
            .arg(ttl_ms)
            .arg(&e.cache_id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("put_cached"))?;
        Ok(stored == 1)
    }

    pub(super) async fn v_cached(
        &self,
        seller: &str,
        cache_id: &str,
        now: i64,
    ) -> Result<Option<CacheEntry>, StoreError> {
        let f: RawFields = redis::cmd("HGETALL")
            .arg(self.vkey("cache", &format!("{}:{cache_id}", escape(seller))))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("cached"))?;
        if f.is_empty() {
            return Ok(None);
        }
        let entry = cache_from(seller, cache_id, &f)?;
        Ok((entry.expires_at > now).then_some(entry))
    }

    pub(super) async fn v_cached_by_order(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<CacheEntry>, StoreError> {
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.vkey("cache-of", &pair(seller, order_id)))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("cached_by_order"))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL")
                .arg(self.vkey("cache", &format!("{}:{id}", escape(seller))));
        }
        let all: Vec<RawFields> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(failed("cached_by_order"))?;
        let mut out = Vec::new();
        for (id, f) in ids.iter().zip(&all) {
            if f.is_empty() {
                continue;
            }
            let entry = cache_from(seller, id, f)?;
            if entry.order_id == order_id {
                out.push(entry);
            }
        }
        Ok(out)
    }

    pub(super) async fn v_link_pseudonym(
        &self,
        seller: &str,
        order_id: &str,
        pseudonym: &str,
    ) -> Result<bool, StoreError> {
        let p = pair(seller, order_id);
        let linked: i64 = LINK_PSEUDONYM
            .key(self.vkey("key-of", &p))
            .key(self.vkey("psn", pseudonym))
            .key(self.vkey("psn-of", &p))
            .arg(&p)
            .arg(pseudonym)
            .invoke_async(&mut self.conn())
            .await
            .map_err(failed("link_pseudonym"))?;
        Ok(linked == 1)
    }

    pub(super) async fn v_orders_by_pseudonym(
        &self,
        pseudonym: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.vkey("psn", pseudonym))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("orders_by_pseudonym"))?;
        let mut out = members
            .iter()
            .map(|m| unpair(m))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        Ok(out)
    }

    pub(super) async fn v_pseudonyms_of(
        &self,
        seller: &str,
        order_id: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.vkey("psn-of", &pair(seller, order_id)))
            .query_async(&mut self.conn())
            .await
            .map_err(failed("pseudonyms_of"))?;
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_through_their_escaping() {
        for (s, o) in [("A1", "902-1"), ("a:b", "c%3Ad"), ("%", ":")] {
            assert_eq!(unpair(&pair(s, o)).unwrap(), (s.to_string(), o.to_string()));
        }
        assert_ne!(pair("a:b", "c"), pair("a", "b:c"));
    }
}
