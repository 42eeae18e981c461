//! Priority lanes and tool shares across instances (Redis mode): the fairness half of the
//! limiter's Lua script, and the candidates a dispatcher offers it.
//!
//! **Why.** Each instance orders its own waiters (lane, fair tag, arrival; `bucket.rs`), but with
//! one Redis bucket shared by several instances, each instance's dispatcher reserves one slot
//! at a time and Redis used to grant those reservations first come, first served. A tool
//! sending through two instances then got twice the slots of a tool sending through one, and a
//! low-priority tool on one instance was served before a high-priority tool waiting on another.
//!
//! **State.** Next to the seller's bucket (same hash tag, `<bucket key>:fair`), one Redis hash:
//! - `v<lane>`: the lane's virtual time;
//! - `f<lane>:<tool>`: the tool's finish tag in that lane (its next request starts at
//!   `max(finish, virtual time)`: a tool that was away keeps no saved-up credit);
//! - `a<lane>:<tool>`: until when (Redis time, µs) the tool counts as *active*: waiting here.
//!
//! Tags are start-time fair queueing tags: a grant advances the tool's finish by
//! `FAIR_SCALE / share` ([`increment`]), so over any stretch of contention the grants of two
//! tools stand in the ratio of their shares.
//!
//! **Decision.** The dispatcher sends the *candidates* at the head of its local queue: the first
//! waiter of each distinct tool, in local order, [`MAX_CANDIDATES`] at most, with lane, tag
//! increment, how long it may still wait, and whether more of that tool wait behind it
//! (`backlogged`). In the same script as the bucket's GCRA (one round trip), the candidates whose
//! deadline comes before the bucket's next slot are refused on the spot (429, the slot as
//! retry-after) and are never chosen. Whether a refused tool still counts as waiting depends on
//! which bucket set that slot:
//! - an application bucket (saturated by other sellers): the tool's requests may never be
//!   served, so it does not count, and its small tag holds no one back;
//! - the seller's bucket: it counts (when more of it wait behind the refused one). Otherwise a
//!   tool with a long wait would starve it: asking at each slot, it reserves the next one, so a
//!   request of a tool that may wait less than one interval, asking in between, always finds
//!   the slot too far. Counted, it holds the other back; the bucket refills, and its next
//!   request goes at once.
//!
//! Every other candidate is marked active (it is waiting), then the first *eligible* one is
//! taken:
//! - not eligible while a tool active in a higher lane exists (high before normal before low,
//!   whichever instance each waits on);
//! - not eligible while its start tag is one of its own requests (or more) ahead of the smallest
//!   start tag among the active tools of its lane: a tool that got ahead waits for the others,
//!   so two tools of equal shares are never more than one grant apart while both wait.
//!
//! An eligible candidate gets the bucket's next slot. If no candidate is eligible the answer is
//! *deferred*: nothing is reserved, the waiters stay queued and the dispatcher asks again after
//! the hint (half an interval, 1 to 250 ms); a waiter whose deadline comes first is refused then
//! (429 [`super::RateLimitError::Deferred`], audit reason `rate_limited_deferred`, metric
//! outcome `deferred`), its retry-after the script's estimate of when its instance's waiters may
//! go: the next slot plus one interval per waiting tool that goes first.
//!
//! **Activity.** A deferred candidate is active until `now + hint +` [`ACTIVE_MARGIN`] — it will
//! ask again before that; one not chosen beside a grant until that grant's slot plus the margin
//! (its instance's dispatcher sleeps until the slot before it asks again, more than a second on
//! a slow operation); a granted one until its slot, plus the margin when it is backlogged (its
//! instance asks again at that slot). A tool that stops asking (its waiters served, timed out or
//! gone, its instance down) stops holding others back within the margin, so a lone tool takes
//! every token: work-conserving, as locally. A short deferral spends no capacity: the bucket
//! keeps refilling and the next grant uses it.
//!
//! **Virtual time.** After a grant, the lane's virtual time moves up to the smallest start tag
//! of its active tools (the granted one included), never past a tool that is still waiting.
//!
//! **Expiry.** Inactive tools whose finish tag the virtual time has passed carry nothing and
//! are deleted at the next decision; the hash expires a second after the later of its last
//! activity and the bucket's own expiry (then every tool starts again from zero, all equal).
//! Redis unreachable: the instances fall back to local buckets and local fairness, as before.

use std::time::Duration;

/// Fixed-point scale of the tags in Redis (one request of share 1). Lua numbers are doubles:
/// exact up to 2^53, billions of grants even at a share of 0.01.
const FAIR_SCALE: f64 = 10_000.0;

/// The retry hint of a deferred decision: half the bucket's interval, 1 to 250 ms.
pub(crate) fn retry_hint(interval: Duration) -> Duration {
    (interval / 2).clamp(Duration::from_millis(1), Duration::from_millis(250))
}

/// At most this many distinct tools are offered per decision.
pub(crate) const MAX_CANDIDATES: usize = 4;

/// How far down the local queue the dispatcher looks for candidates.
pub(crate) const SCAN_LIMIT: usize = 256;

/// How long past its expected next ask a waiting tool stays active (timer, round trip and
/// scheduling delays on a loaded machine).
pub(crate) const ACTIVE_MARGIN: Duration = Duration::from_millis(250);

/// One waiter offered to the script.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    /// The tool (its client id).
    pub(crate) tool: &'a str,
    /// Priority lane: 0 high, 1 normal, 2 low.
    pub(crate) lane: usize,
    /// Tag increment of one request ([`increment`] of its share).
    pub(crate) increment: u64,
    /// How long it may still wait for its slot.
    pub(crate) max_wait: Duration,
    /// Whether more requests of this tool wait here behind it.
    pub(crate) backlogged: bool,
}

/// Tag increment of one request of a tool with this share.
pub(crate) fn increment(share: f64) -> u64 {
    let inc = (FAIR_SCALE / share).ceil();
    if inc.is_finite() {
        (inc as u64).clamp(1, 1_000_000_000_000)
    } else {
        1_000_000_000_000
    }
}

/// The fairness functions of the script (defined before its body, see `redis.rs`). The state is
/// loaded once, decided on, and written once.
pub(crate) const FAIR_LUA: &str = r#"
local function fmt(x) return string.format('%.0f', x) end
local function fair_load(key)
  local h = redis.call('HGETALL', key)
  local st = {v = {0, 0, 0}, f = {}, a = {}, dirty = {}, vdirty = {}}
  for i = 1, #h, 2 do
    local k, val = h[i], tonumber(h[i + 1])
    local c, rest = string.sub(k, 1, 1), string.sub(k, 2)
    if c == 'v' then st.v[tonumber(rest) + 1] = val
    elseif c == 'f' then st.f[rest] = val
    elseif c == 'a' then st.a[rest] = val end
  end
  return st
end
-- From ARGV[p]: the activity margin and the retry hint (us), the candidates' count, then per
-- candidate its tool, lane, increment, max_wait_us and backlogged (0|1).
local function fair_candidates(p)
  local out = {}
  for j = 1, tonumber(ARGV[p + 2]) do
    local q = p + 3 + 5 * (j - 1)
    local lane = tonumber(ARGV[q + 1])
    out[j] = {id = lane .. ':' .. ARGV[q], lane = lane, inc = tonumber(ARGV[q + 2]),
              max_wait = tonumber(ARGV[q + 3]), backlogged = ARGV[q + 4] == '1'}
  end
  return tonumber(ARGV[p]), tonumber(ARGV[p + 1]), out
end
local function start_tag(st, id, lane)
  return math.max(st.f[id] or 0, st.v[lane + 1])
end
-- Splits the candidates at the bucket's next slot (`wait` from now): those that cannot wait
-- that long are refused on the spot (bit j-1 of the mask for candidate j) and cannot be
-- chosen. Returns the others (`live`, in order), the candidates that count as waiting (the live
-- ones and, when `keep`, the refused ones with a backlog, in order) and the mask. `keep`: the
-- seller's bucket set the slot, so it refills and the refused tool's next request may be
-- served; it goes on holding others back, as any waiting tool. An application bucket's slot
-- (other sellers saturate it) may never come within its deadline: it counts as nothing.
local function fair_split(cands, wait, keep)
  local live, waiting, refused = {}, {}, 0
  for j, c in ipairs(cands) do
    c.index = j
    if wait > c.max_wait then
      refused = refused + 2 ^ (j - 1)
      c.refused = true
      if keep and c.backlogged then waiting[#waiting + 1] = c end
    else
      live[#live + 1] = c
      waiting[#waiting + 1] = c
    end
  end
  return live, waiting, refused
end
-- Marks the candidates waiting until `until_`, then returns the first eligible one's index,
-- its start tag and the smallest start tag of its lane's active tools; nil: none is eligible.
-- A refused candidate is marked, never chosen.
local function fair_pick(st, cands, now, until_)
  for _, c in ipairs(cands) do
    c.old_a = st.a[c.id] or 0
    if c.old_a < until_ then st.a[c.id] = until_ end
    st.dirty[c.id] = true
  end
  local min_start, busy = {}, {}
  for id, a in pairs(st.a) do
    if a > now then
      local lane = tonumber(string.sub(id, 1, 1))
      local s = start_tag(st, id, lane)
      busy[lane] = true
      if min_start[lane] == nil or s < min_start[lane] then min_start[lane] = s end
    end
  end
  for j, c in ipairs(cands) do
    local higher = false
    for l = 0, c.lane - 1 do
      if busy[l] then higher = true end
    end
    if not higher and not c.refused then
      local s = start_tag(st, c.id, c.lane)
      if s < min_start[c.lane] + c.inc then return j, s, min_start[c.lane] end
    end
  end
  return nil
end
-- When the deferred candidates may expect to go (us from now), the earliest of them: the
-- bucket's next slot plus one interval for each waiting tool that goes first (a higher lane's,
-- or one a grant or more behind it): each of those is granted at least once before it. `iv`:
-- the interval of the bucket that set the slot (an application bucket's, when it binds).
local function fair_estimate(st, cands, now, wait, iv)
  local best
  for _, c in ipairs(cands) do
    local s = start_tag(st, c.id, c.lane)
    local first = 0
    for id, a in pairs(st.a) do
      if a > now and id ~= c.id then
        local lane = tonumber(string.sub(id, 1, 1))
        if lane < c.lane or (lane == c.lane and start_tag(st, id, lane) + c.inc <= s) then
          first = first + 1
        end
      end
    end
    local e = wait + math.max(first, 1) * iv
    if best == nil or e < best then best = e end
  end
  return best
end
-- The chosen candidate got the slot at `slot`. The others offered with it wait on for their
-- instance's next ask, which comes once that slot has passed (its dispatcher sleeps until it):
-- they count as waiting until then plus the margin, however far the slot is.
local function fair_grant(st, c, s, min_start, slot, margin, cands)
  st.f[c.id] = s + c.inc
  if min_start > st.v[c.lane + 1] then
    st.v[c.lane + 1] = min_start
    st.vdirty[c.lane + 1] = true
  end
  local until_ = slot
  if c.backlogged then until_ = slot + margin end
  st.a[c.id] = math.max(c.old_a, until_)
  for _, o in ipairs(cands) do
    if o ~= c and st.a[o.id] < slot + margin then st.a[o.id] = slot + margin end
  end
end
local function fair_save(key, st, now, keep_us)
  local set, del = {}, {}
  local latest = now + keep_us
  for id, a in pairs(st.a) do
    local lane = tonumber(string.sub(id, 1, 1))
    if a > latest then latest = a end
    if a <= now and (st.f[id] or 0) <= st.v[lane + 1] then
      del[#del + 1] = 'a' .. id
      del[#del + 1] = 'f' .. id
    elseif st.dirty[id] then
      set[#set + 1] = 'a' .. id
      set[#set + 1] = fmt(a)
      set[#set + 1] = 'f' .. id
      set[#set + 1] = fmt(st.f[id] or 0)
    end
  end
  for i = 1, 3 do
    if st.vdirty[i] then
      set[#set + 1] = 'v' .. (i - 1)
      set[#set + 1] = fmt(st.v[i])
    end
  end
  if #del > 0 then redis.call('HDEL', key, unpack(del)) end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  redis.call('PEXPIRE', key, math.ceil((latest - now) / 1000) + 1000)
end
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increments_are_inverse_to_shares_and_bounded() {
        assert_eq!(increment(1.0), 10_000);
        assert_eq!(increment(0.5), 20_000);
        assert_eq!(increment(0.3), 33_334);
        assert_eq!(increment(f64::MIN_POSITIVE), 1_000_000_000_000);
        assert_eq!(increment(0.0), 1_000_000_000_000);
        assert_eq!(increment(1e9), 1);
    }
}
