"""RedisStore's Lua scripts: every change of the queue is one script, so it is atomic.

The key layout (``_redis_keys`` names it for Python; ``KEYS[1]`` is the base,
``{prefix}``, a hash tag that keeps every key of a store in one cluster slot):

* ``B:seq`` the newest event position; ``B:events`` the stream of events, one entry
  per event at ID ``<position>-0``, fields ``i`` id, ``b`` JSON, ``n`` name, ``k`` key,
  ``t`` occurred_at (microseconds), ``r`` how many deliveries it has; ``B:ids`` event
  id -> position; ``B:left`` position -> deliveries not pruned, once a prune took
  some (before that, the event's ``r``); ``B:done`` position -> done, not pruned.
* Per receiver id ``r``: the stream ``B:r:<r>`` with one entry per delivery (at the
  event's position, ``<position>-0``; a redelivered one at ``<newest position>-<n>``),
  fields ``p`` position and ``k`` key, read by the consumer group ``aevents``. Its
  pending entries list (PEL) is the table of deliveries read and not finished,
  owned by the consumer holding them, by ``~ready`` (ready, or waiting for its
  retry time) or by ``~parked`` (a keyed delivery waiting behind an earlier one of
  its key). ``B:due:<r>`` a sorted set of the held and waiting deliveries (member
  entry id, score the exact time, in microseconds on the store's clock, when it
  becomes claimable): a claim lists the due ones with ``ZRANGEBYSCORE``, so a
  delivery whose lease ran out is found however many live leases come before
  it in the stream; ``B:st:<r>`` position ->
  attempts started * 2 + 1 while the attempt of the claim that holds it was started;
  ``B:mv:<r>`` position -> entry id of a redelivered delivery; ``B:age:<r>`` a sorted
  set of its deliveries not done and not dead (member entry id, score occurred_at
  in microseconds), whose first is the backlog's ``oldest``.
* ``B:k:<len(r)>:<r>:<key>`` a sorted set per (receiver, key) of the deliveries not
  finished (score position, member entry id): only its first may be claimed.
  ``B:held`` JSON [receiver, key] -> "<event id> <entry id>" of a dead letter
  holding its key.
* ``B:dead`` the dead-letter stream; ``B:letters`` letter id -> its entry there.
* ``B:consumers`` consumer id -> JSON registration; ``B:corder`` registration order.
* ``B:idem:<key>`` the first event of an idempotency key (``SET NX PX``);
  ``B:idemt`` key -> occurred_at, for ``forget_idempotency_keys`` and stats.
* ``B:counts`` events, pending, done, dead; ``B:pend`` / ``B:deadc`` per receiver.
* ``B:wake`` a stream of its 16 newest entries (``MAXLEN 16``), added to whenever other
  consumers may find something to claim (a publish, a redelivery, a claim released, a
  key's next delivery let go), each naming the receivers concerned (field ``r``, JSON)
  or none (``w``), and for a publish the publishing store (``c``, a token of the
  ``RedisStore``): consuming runtimes read it with ``XREAD BLOCK``.

Lease times in the PEL: when a claim takes over an entry, or a renewal or a retry
moves it, its delivery time is set with ``XCLAIM ... TIME`` to the moment it becomes
claimable (on the store's clock) less ``SHIFT`` (30 years); an entry claimed fresh
keeps the time ``XREADGROUP`` gave it (no XCLAIM: one call less per delivery).
``B:due:<r>`` holds the exact time and is the only one read.
"""

from __future__ import annotations

__all__ = [
    "BACKLOG",
    "CLAIM",
    "CONSUMERS",
    "DISCARD",
    "EVENTS_AFTER",
    "EVENTS_AT",
    "FORGET",
    "HEARTBEAT",
    "LEASES",
    "PENDING",
    "PRUNE",
    "PUBLISH",
    "PUBLISH_CLAIM",
    "REDELIVER",
    "REGISTER",
    "RELEASE_KEY",
    "RENEW",
    "SETTLE",
    "UNREGISTER",
]

_PRELUDE = r"""
local B = KEYS[1]
local GROUP = 'aevents'
local SHIFT = 946080000000
local function rkey(r) return B .. ':r:' .. r end
local function duekey(r) return B .. ':due:' .. r end
local function agekey(r) return B .. ':age:' .. r end
local function stkey(r) return B .. ':st:' .. r end
local function mvkey(r) return B .. ':mv:' .. r end
local function kkey(r, k) return B .. ':k:' .. #r .. ':' .. r .. ':' .. k end
local function heldfield(r, k) return cjson.encode({r, k}) end

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local T = server_ms()

-- the PEL delivery time that encodes "claimable at us" (microseconds, store clock)
local function pel_time(us)
  local d = math.floor(us / 1000) - SHIFT
  if d < 0 then d = 0 end
  if d > T then d = T end
  return string.format('%d', d)
end

local function fields(list)
  local out = {}
  for i = 1, #list, 2 do out[list[i]] = list[i + 1] end
  return out
end

local function entry(r, id)
  local found = redis.call('XRANGE', rkey(r), id, id)
  if #found == 0 then return nil end
  return fields(found[1][2])
end

local function entry_id(r, pos)
  return redis.call('HGET', mvkey(r), pos) or (pos .. '-0')
end

local function started(r, pos)
  local v = tonumber(redis.call('HGET', stkey(r), pos) or '0')
  return math.floor(v / 2), v % 2
end

local function set_started(r, pos, s, o)
  if s == 0 and o == 0 then
    redis.call('HDEL', stkey(r), pos)
  else
    redis.call('HSET', stkey(r), pos, string.format('%d', s * 2 + o))
  end
end

-- the owner and attempt of a pending entry, or nil
local streams = {}
local function pending(r, id)
  local exists = streams[r]
  if exists == nil then
    exists = redis.call('EXISTS', rkey(r)) == 1
    streams[r] = exists
  end
  if not exists then return nil end
  local p = redis.call('XPENDING', rkey(r), GROUP, id, id, 1)
  if #p == 0 then return nil end
  return p[1][2], tonumber(p[1][4])
end

local function to_ready(r, id, at)
  redis.call('XCLAIM', rkey(r), GROUP, '~ready', 0, id, 'TIME', pel_time(at), 'JUSTID')
  redis.call('ZADD', duekey(r), string.format('%d', at), id)
end

-- the first unfinished delivery of (r, k) may go: unpark it if it waits parked
local function unpark_head(r, k, now)
  local head = redis.call('ZRANGE', kkey(r, k), 0, 0)
  if #head == 0 then return end
  local owner = pending(r, head[1])
  if owner == '~parked' then to_ready(r, head[1], now) end
end

-- whether stream entry id a comes before b
local function id_less(a, b)
  local ams, aseq = string.match(a, '(%d+)-(%d+)')
  local bms, bseq = string.match(b, '(%d+)-(%d+)')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end

local function is_head(r, k, id)
  local head = redis.call('ZRANGE', kkey(r, k), 0, 0)
  return #head > 0 and head[1] == id
end

-- keep the stream to what the group has not acknowledged
local function trim(r)
  local key = rkey(r)
  if redis.call('EXISTS', key) == 0 then return end
  local summary = redis.call('XPENDING', key, GROUP)
  local minid
  if tonumber(summary[1]) > 0 then
    minid = summary[2]
  else
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local info = fields(g)
      if info['name'] == GROUP then
        local ms, seq = string.match(info['last-delivered-id'], '(%d+)-(%d+)')
        minid = ms .. '-' .. (tonumber(seq) + 1)
      end
    end
  end
  if minid then redis.call('XTRIM', key, 'MINID', '~', minid) end
end

local function live(c, now)
  local raw = redis.call('HGET', B .. ':consumers', c)
  if not raw then return nil end
  local reg = cjson.decode(raw)
  if reg['expires'] <= now then
    redis.call('HDEL', B .. ':consumers', c)
    redis.call('ZREM', B .. ':corder', c)
    return nil
  end
  return reg
end

-- the values of many fields of one hash, a few thousand per call
local function hmget(key, names)
  local values = {}
  for first = 1, #names, 4000 do
    local part = redis.call('HMGET', key, unpack(names, first, math.min(first + 3999, #names)))
    for _, v in ipairs(part) do table.insert(values, v) end
  end
  return values
end

-- something may be claimable for other consumers: for the receivers in the set
-- `receivers` (receiver -> true), or for any when it is nil or holds more than 16. The
-- stream keeps its 16 newest entries exactly: a listener that reads fewer than 16 after
-- the last it saw has read every wake since, and may skip those for receivers not its
-- own; reading 16, it may have missed some, and claims.
-- `by`, when given, names the store that wakes (its own listener skips the wake).
local function wake(receivers, by)
  local names = {}
  for r, _ in pairs(receivers or {}) do
    table.insert(names, r)
    if #names > 16 then break end
  end
  local fieldlist = {'w', '1'}
  if #names > 0 and #names <= 16 then fieldlist = {'r', cjson.encode(names)} end
  if by then
    table.insert(fieldlist, 'c')
    table.insert(fieldlist, by)
  end
  redis.call('XADD', B .. ':wake', 'MAXLEN', '16', '*', unpack(fieldlist))
end

local function event_body(pos)
  local found = redis.call('XRANGE', B .. ':events', pos .. '-0', pos .. '-0')
  if #found == 0 then return false end
  return fields(found[1][2])
end
"""

_PUBLISH = r"""
-- ARGV: the publishing store's wake token, ttl_ms, count, then per event: id, body, name,
-- haskey, key, occurred_us, hasidem, idem, nreceivers, receivers... (more may follow)
-- -> per event {1, position} (added), {2, body} (its idempotency key's first event) or
-- {3, index} (the first of the batch with its key); and, when `claiming` (the caller
-- wakes, after its claim), receiver -> deliveries added, without waking
local function publish(claiming)
local by = ARGV[1]
local ttl = ARGV[2]
local n = tonumber(ARGV[3])
local events = {}
local i = 4
for e = 1, n do
  local ev = {id = ARGV[i], body = ARGV[i + 1], name = ARGV[i + 2], haskey = ARGV[i + 3] == '1',
              key = ARGV[i + 4], t = ARGV[i + 5], hasidem = ARGV[i + 6] == '1', idem = ARGV[i + 7]}
  local nr = tonumber(ARGV[i + 8])
  if nr == 1 then
    ev.receivers = {ARGV[i + 9]}
  else
    ev.receivers = {}
    local seen = {}
    for j = 1, nr do
      local r = ARGV[i + 8 + j]
      if not seen[r] then seen[r] = true; table.insert(ev.receivers, r) end
    end
  end
  i = i + 9 + nr
  events[e] = ev
end
-- check everything before writing anything: all or none
local first_of = {}
local adding = {}
local result = {}
local event_ids = {}
for e, ev in ipairs(events) do event_ids[e] = ev.id end
local existing = hmget(B .. ':ids', event_ids)
for e, ev in ipairs(events) do
  local standing = nil
  if ev.hasidem then
    local body = redis.call('GET', B .. ':idem:' .. ev.idem)
    if body then
      standing = {2, body}
    elseif first_of[ev.idem] then
      standing = {3, first_of[ev.idem]}
    end
  end
  if not standing then
    if adding[ev.id] or existing[e] then
      return redis.error_reply('AEVENTS duplicate event ' .. ev.id)
    end
    adding[ev.id] = true
    if ev.hasidem then first_of[ev.idem] = e end
  end
  result[e] = standing
end
local new = 0
for e, _ in ipairs(events) do
  if not result[e] then new = new + 1 end
end
if new == 0 then return result end
-- the positions of the new events, then a few calls for the whole batch
local pos = redis.call('INCRBY', B .. ':seq', new) - new
local ids, per, known, ages = {}, {}, {}, {}  -- known: receiver -> its stream's key
local events_key = B .. ':events'
local deliveries = 0
local function flush(key, list)
  if #list > 0 then redis.call('HSET', key, unpack(list)) end
end
for e, ev in ipairs(events) do
  if not result[e] then
    pos = pos + 1
    local id = pos .. '-0'
    if ev.hasidem then
      redis.call('SET', B .. ':idem:' .. ev.idem, ev.body, 'NX', 'PX', ttl)
      redis.call('ZADD', B .. ':idemt', ev.t, ev.idem)
    end
    local count = string.format('%d', #ev.receivers)
    if ev.haskey then
      redis.call('XADD', events_key, id, 'i', ev.id, 'b', ev.body, 'n', ev.name, 't', ev.t,
                 'r', count, 'k', ev.key)
    else
      redis.call('XADD', events_key, id, 'i', ev.id, 'b', ev.body, 'n', ev.name, 't', ev.t,
                 'r', count)
    end
    ids[#ids + 1] = ev.id
    ids[#ids + 1] = pos
    if #ids >= 4000 then
      flush(B .. ':ids', ids)
      ids = {}
    end
    for _, r in ipairs(ev.receivers) do
      local stream = known[r]
      if not stream then
        stream = rkey(r)
        known[r] = stream
        if redis.call('SADD', B .. ':receivers', r) == 1 then
          redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
        end
        ages[r] = {}
      end
      if ev.haskey then
        redis.call('XADD', stream, id, 'p', pos, 'k', ev.key)
        redis.call('ZADD', kkey(r, ev.key), pos, id)
      else
        redis.call('XADD', stream, id, 'p', pos)
      end
      per[r] = (per[r] or 0) + 1
      local list = ages[r]
      list[#list + 1] = ev.t
      list[#list + 1] = id
      if #list >= 4000 then
        redis.call('ZADD', agekey(r), unpack(ages[r]))
        ages[r] = {}
      end
    end
    deliveries = deliveries + #ev.receivers
    result[e] = {1, pos}
  end
end
flush(B .. ':ids', ids)
for r, count in pairs(per) do redis.call('HINCRBY', B .. ':pend', r, count) end
for r, list in pairs(ages) do
  if #list > 0 then redis.call('ZADD', agekey(r), unpack(list)) end
end
redis.call('HINCRBY', B .. ':counts', 'events', new)
if deliveries > 0 then
  redis.call('HINCRBY', B .. ':counts', 'pending', deliveries)
  if not claiming then wake(per, by) end
end
return result, per
end
"""

PUBLISH = _PRELUDE + _PUBLISH + "\nlocal result = publish(false)\nreturn result\n"

EVENTS_AFTER = (
    _PRELUDE
    + r"""
-- ARGV: position, limit -> {end, n_taken, bodies...}
local position = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local head = tonumber(redis.call('GET', B .. ':seq') or '0')
local found = redis.call('XRANGE', B .. ':events', '(' .. position .. '-0', '+', 'COUNT', limit)
local out = {0}
local last = position
for _, e in ipairs(found) do
  table.insert(out, fields(e[2])['b'])
  last = tonumber(string.match(e[1], '^(%d+)'))
end
if #found < limit then
  out[1] = math.max(head, position)
else
  out[1] = last
end
return out
"""
)

REGISTER = (
    _PRELUDE
    + r"""
-- ARGV: consumer, registration JSON (routes, receivers), now_us, ttl_us
local c, now = ARGV[1], tonumber(ARGV[3])
local reg = cjson.decode(ARGV[2])
local known = live(c, now)
if known then
  reg['registered'] = known['registered']
else
  reg['registered'] = now
  redis.call('ZADD', B .. ':corder', redis.call('INCR', B .. ':cseq'), c)
end
reg['seen'] = now
reg['expires'] = now + tonumber(ARGV[4])
redis.call('HSET', B .. ':consumers', c, cjson.encode(reg))
return 1
"""
)

HEARTBEAT = (
    _PRELUDE
    + r"""
-- ARGV: consumer, now_us, ttl_us
local c, now = ARGV[1], tonumber(ARGV[2])
local reg = live(c, now)
if not reg then return 0 end
reg['seen'] = now
reg['expires'] = now + tonumber(ARGV[3])
redis.call('HSET', B .. ':consumers', c, cjson.encode(reg))
return 1
"""
)

CONSUMERS = (
    _PRELUDE
    + r"""
-- ARGV: now_us -> {consumer, JSON, leases, ...} in registration order
local now = tonumber(ARGV[1])
local held = {}
for _, r in ipairs(redis.call('SMEMBERS', B .. ':receivers')) do
  if redis.call('EXISTS', rkey(r)) == 1 then
    local summary = redis.call('XPENDING', rkey(r), GROUP)
    if summary[4] then
      for _, pair in ipairs(summary[4]) do
        held[pair[1]] = (held[pair[1]] or 0) + tonumber(pair[2])
      end
    end
  end
end
local out = {}
for _, c in ipairs(redis.call('ZRANGE', B .. ':corder', 0, -1)) do
  local reg = live(c, now)
  if reg then
    table.insert(out, c)
    table.insert(out, cjson.encode(reg))
    table.insert(out, held[c] or 0)
  else
    redis.call('ZREM', B .. ':corder', c)
  end
end
return out
"""
)

_CLAIM = r"""
-- ARGV (a table of strings): consumer, limit, now_us, lease_us, start; `known` the set of
-- event positions whose bodies the caller has (none sent back); `only`, when given (a
-- set of receivers), claims only the deliveries at `known` positions to those receivers,
-- new ones a publish just added: their unread entries before them become ready (as
-- unread entries beyond a claim's limit do), and no due one is looked at
-- -> {receiver, attempt, lease expired (0/1), position, event body or false, started,
-- entry id, ...}
-- The first `start` claims whose lease did not run out are started too, as SETTLE
-- would start them (their attempt counts): the claimer runs them next.
local function claim(ARGV, known, only)
local c, limit, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local to_start = tonumber(ARGV[5] or '0')
local reg = live(c, now)
if not reg then return redis.error_reply('AEVENTS not live') end
if limit <= 0 then return {} end
local until_us = now + tonumber(ARGV[4])
local lease_time = pel_time(until_us)
local candidates = {}
for _, r in ipairs(reg['receivers']) do
  local key = rkey(r)
  if (not only or only[r]) and redis.call('EXISTS', key) == 1 then
    local due = {}
    if not only then
      due = redis.call('ZRANGEBYSCORE', duekey(r), '-inf', ARGV[3], 'LIMIT', 0, limit)
    end
    for _, id in ipairs(due) do
      local f = entry(r, id)
      if not f then
        redis.call('ZREM', duekey(r), id)
      elseif f['k'] and not is_head(r, f['k'], id) then
        -- behind an earlier delivery of its key (a redelivered one): parked until the
        -- head is finished, so that it never stands in the way of the due ones after it
        redis.call('XCLAIM', key, GROUP, '~parked', 0, id, 'IDLE', 0, 'JUSTID')
        redis.call('ZREM', duekey(r), id)
      else
        table.insert(candidates, {r = r, id = id, pos = tonumber(f['p']), key = f['k']})
      end
    end
    local fresh = redis.call('XREADGROUP', 'GROUP', GROUP, c, 'COUNT', limit, 'STREAMS', key, '>')
    if fresh then
      for _, e in ipairs(fresh[1][2]) do
        -- fields as PUBLISH and REDELIVER add them: p, position[, k, key]
        local f = e[2]
        table.insert(candidates,
                     {r = r, id = e[1], pos = tonumber(f[2]), key = f[4], fresh = true})
      end
    end
  end
end
local function before(a, b)
  if a.pos ~= b.pos then return a.pos < b.pos end
  return a.r < b.r
end
local ordered = true
for i = 2, #candidates do
  if before(candidates[i], candidates[i - 1]) then ordered = false break end
end
if not ordered then table.sort(candidates, before) end
local taken = {}
for _, cand in ipairs(candidates) do
  local head = (not cand.key) or is_head(cand.r, cand.key, cand.id)
  if #taken < limit and head and (not only or known[cand.pos]) then
    table.insert(taken, cand)
  elseif cand.fresh then
    if head then
      to_ready(cand.r, cand.id, now)
    else
      redis.call('XCLAIM', rkey(cand.r), GROUP, '~parked', 0, cand.id, 'IDLE', 0, 'JUSTID')
    end
  end
end
if #taken == 0 then return {} end
-- per receiver, in a few calls: the started counts, the takeovers, the deadlines
local per = {}
for _, cand in ipairs(taken) do
  per[cand.r] = per[cand.r] or {}
  table.insert(per[cand.r], cand)
end
local function start_taken()
  -- in publish order, the first to_start of those whose last attempt did not run out
  local starts = {}
  for _, cand in ipairs(taken) do
    if to_start <= 0 then break end
    if cand.o == 0 then
      cand.started = 1
      to_start = to_start - 1
      starts[cand.r] = starts[cand.r] or {}
      table.insert(starts[cand.r], cand.pos)
      table.insert(starts[cand.r], string.format('%d', (cand.s + 1) * 2 + 1))
    end
  end
  for r, list in pairs(starts) do
    for first = 1, #list, 4000 do
      redis.call('HSET', stkey(r), unpack(list, first, math.min(first + 3999, #list)))
    end
  end
end
local deadline = string.format('%d', until_us)
for r, cands in pairs(per) do
  -- the started counts; none yet for the events the caller just added (`known`)
  local positions, looked = {}, {}
  for i, cand in ipairs(cands) do
    if not known[cand.pos] then
      table.insert(positions, cand.pos)
      looked[#positions] = i
    end
  end
  local counts = {}
  for first = 1, #positions, 4000 do
    local last = math.min(first + 3999, #positions)
    local part = redis.call('HMGET', stkey(r), unpack(positions, first, last))
    for j = first, last do counts[looked[j]] = part[j - first + 1] end
  end
  local due = {}
  for i, cand in ipairs(cands) do
    local v = tonumber(counts[i] or '0')
    local s, o = math.floor(v / 2), v % 2
    if o == 1 then set_started(r, cand.pos, s, 0) end
    cand.s, cand.o = s, o
    -- a fresh entry read just now is this consumer's, delivery count 1: nothing to change
    if not (cand.fresh and s == 0) then
      redis.call('XCLAIM', rkey(r), GROUP, c, 0, cand.id, 'TIME', lease_time,
                 'RETRYCOUNT', s + 1, 'JUSTID')
    end
    table.insert(due, deadline)
    table.insert(due, cand.id)
    if #due >= 4000 then
      redis.call('ZADD', duekey(r), unpack(due))
      due = {}
    end
  end
  if #due > 0 then redis.call('ZADD', duekey(r), unpack(due)) end
end
start_taken()
-- the bodies: one XRANGE over the positions when they lie close together
local bodies = {}
local low, high, distinct = math.huge, 0, 0
for _, cand in ipairs(taken) do
  if bodies[cand.pos] == nil and not known[cand.pos] then
    bodies[cand.pos] = false
    distinct = distinct + 1
    if cand.pos < low then low = cand.pos end
    if cand.pos > high then high = cand.pos end
  end
end
if distinct == 0 then
  -- the caller has every body
elseif high - low + 1 <= distinct * 2 + 16 then
  for _, e in ipairs(redis.call('XRANGE', B .. ':events', low .. '-0', high .. '-0')) do
    local pos = tonumber(string.match(e[1], '^(%d+)'))
    -- fields as PUBLISH adds them: i, id, b, body, ...
    if bodies[pos] == false then bodies[pos] = e[2][4] end
  end
else
  for pos, _ in pairs(bodies) do
    local ev = event_body(pos)
    if ev then bodies[pos] = ev['b'] end
  end
end
local out = {}
local sent = {}
local n = 0
for _, cand in ipairs(taken) do
  local body = false
  if not sent[cand.pos] then
    sent[cand.pos] = true
    body = bodies[cand.pos] or false  -- nil for a known position
  end
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = cand.r, cand.s + 1, cand.o, cand.pos
  out[n + 5], out[n + 6], out[n + 7] = body, cand.started or 0, cand.id
  n = n + 7
end
return out
end
"""

CLAIM = _PRELUDE + _CLAIM + "\nreturn claim(ARGV, {}, nil)\n"

PUBLISH_CLAIM = (
    _PRELUDE
    + _PUBLISH
    + _CLAIM
    + r"""
-- ARGV: as PUBLISH's, then as CLAIM's (its last five) -> {PUBLISH's answer, CLAIM's}
-- The claim follows only a publish that added an event, and only for a live consumer
-- (none claims nothing); it claims only deliveries this publish added, and sends no
-- body back. The wake
-- names only the receivers with deliveries added and not claimed here: none when the
-- claim took them all, so no consumer wakes (this one's listener neither) for nothing.
local published, added_per = publish(true)
if published['err'] then return published end
local known, added = {}, false
for _, standing in ipairs(published) do
  if standing[1] == 1 then
    known[standing[2]] = true
    added = true
  end
end
if not added then return {published, {}} end
local n = #ARGV
local claimed = claim({ARGV[n - 4], ARGV[n - 3], ARGV[n - 2], ARGV[n - 1], ARGV[n]}, known,
                      added_per or {})
if claimed['err'] then claimed = {} end
local left = {}
for r, count in pairs(added_per or {}) do left[r] = count end
for i = 1, #claimed, 7 do  -- receiver, attempt, expired, position, ...
  local r = claimed[i]
  if known[claimed[i + 3]] and left[r] then left[r] = left[r] - 1 end
end
local waking = {}
for r, count in pairs(left) do
  if count > 0 then waking[r] = true end
end
if next(waking) then wake(waking, ARGV[1]) end
return {published, claimed}
"""
)

_HELD = r"""

-- ARGV from index first to last, width apart: receiver, event id, attempt, ..., and at
-- `hint` past the receiver the claim's event position and entry id as its claim answered
-- ('' '' when the caller does not know them) -> a list of claims {r, event_id, attempt,
-- pos, id}; pos and id are set (strings) when the claim is held: its entry is pending for
-- consumer c with that delivery count. A hint spares the lookups of the position (B:ids)
-- and of a redelivered entry's id (B:mv); a wrong one finds nothing pending, as a claim
-- no longer held. A few calls per receiver, whatever the number of claims.
local function held_claims(c, first, width, last, hint)
  local claims, event_ids, unknown = {}, {}, {}
  for i = first, last, width do
    local claim = {r = ARGV[i], event_id = ARGV[i + 1], attempt = tonumber(ARGV[i + 2]), at = i}
    local pos = ARGV[i + hint]
    if pos ~= '' then
      claim.known, claim.hinted = pos, ARGV[i + hint + 1]
    else
      table.insert(unknown, claim)
      table.insert(event_ids, claim.event_id)
    end
    table.insert(claims, claim)
  end
  if #claims == 0 then return claims end
  if #unknown > 0 then
    local positions = hmget(B .. ':ids', event_ids)
    for i, claim in ipairs(unknown) do claim.known = positions[i] end
  end
  local per = {}
  for _, claim in ipairs(claims) do
    if claim.known then
      per[claim.r] = per[claim.r] or {}
      table.insert(per[claim.r], claim)
    end
  end
  for r, list in pairs(per) do
    if redis.call('EXISTS', rkey(r)) == 1 then
      local wanted, lookups = {}, {}
      for _, claim in ipairs(list) do
        if not claim.hinted then
          table.insert(wanted, claim.known)
          table.insert(lookups, claim)
        end
      end
      if #wanted > 0 then
        local moved = hmget(mvkey(r), wanted)
        for i, claim in ipairs(lookups) do claim.hinted = moved[i] or (claim.known .. '-0') end
      end
      -- the consumer's pending entries from the lowest id wanted to the highest, at most
      -- a few per claim: proportional to the batch, not to all the consumer holds
      local ids, low, high = {}, nil, nil
      local first_pos, last_pos = math.huge, -1  -- of the entries at their event's position
      for i, claim in ipairs(list) do
        local id = claim.hinted
        local pos = tonumber(claim.known)
        if id == claim.known .. '-0' then
          if pos < first_pos then first_pos = pos end
          if pos > last_pos then last_pos = pos end
        else  -- redelivered: compared as an id
          if not low or id_less(id, low) then low = id end
          if not high or id_less(high, id) then high = id end
        end
        ids[i] = id
      end
      if last_pos >= 0 then
        local first_id = string.format('%d-0', first_pos)
        local last_id = string.format('%d-0', last_pos)
        if not low or id_less(first_id, low) then low = first_id end
        if not high or id_less(high, last_id) then high = last_id end
      end
      local most = #list * 2 + 16
      local owned = {}
      local found = redis.call('XPENDING', rkey(r), GROUP, low, high, most, c)
      for _, p in ipairs(found) do owned[p[1]] = tonumber(p[4]) end
      local last = #found == most and found[most][1] or nil  -- read up to here only
      for i, claim in ipairs(list) do
        local id = ids[i]
        local count = owned[id]
        if count == nil and last and id_less(last, id) then  -- beyond what was read
          local one = redis.call('XPENDING', rkey(r), GROUP, id, id, 1, c)
          if #one > 0 then count = tonumber(one[1][4]) end
        end
        if count == claim.attempt then
          claim.pos, claim.id = claim.known, id
        end
      end
    end
  end
  return claims
end

-- count the attempts of the claims in ARGV[first..last] (receiver, event id, attempt,
-- position, entry id) as started -> the indexes (from 1) of those not held
local function start_claims(c, first, last)
  local lost = {}
  local per = {}
  for n, claim in ipairs(held_claims(c, first, 5, last, 3)) do
    if claim.pos then
      per[claim.r] = per[claim.r] or {}
      table.insert(per[claim.r], claim)
    else
      table.insert(lost, n)
    end
  end
  for r, list in pairs(per) do
    local positions = {}
    for i, claim in ipairs(list) do positions[i] = claim.pos end
    local counts = hmget(stkey(r), positions)
    local updates = {}
    for i, claim in ipairs(list) do
      if math.floor(tonumber(counts[i] or '0') / 2) < claim.attempt then
        table.insert(updates, claim.pos)
        table.insert(updates, string.format('%d', claim.attempt * 2 + 1))
      end
      if #updates >= 4000 then
        redis.call('HSET', stkey(r), unpack(updates))
        updates = {}
      end
    end
    if #updates > 0 then redis.call('HSET', stkey(r), unpack(updates)) end
  end
  return lost
end
"""

RENEW = (
    _PRELUDE
    + _HELD
    + r"""
-- ARGV: consumer, now_us, lease_us, then per claim: receiver, event id, attempt, position,
-- entry id (the last two '' when unknown)
local c = ARGV[1]
local until_us = tonumber(ARGV[2]) + tonumber(ARGV[3])
local deadline = string.format('%d', until_us)
local lost = {}
local per = {}
for n, claim in ipairs(held_claims(c, 4, 5, #ARGV, 3)) do
  if claim.pos then
    per[claim.r] = per[claim.r] or {}
    table.insert(per[claim.r], claim.id)
  else
    table.insert(lost, n)
  end
end
for r, ids in pairs(per) do
  for first = 1, #ids, 4000 do
    local part = {unpack(ids, first, math.min(first + 3999, #ids))}
    local command = {rkey(r), GROUP, c, 0}
    for _, id in ipairs(part) do table.insert(command, id) end
    table.insert(command, 'TIME')
    table.insert(command, pel_time(until_us))
    table.insert(command, 'JUSTID')
    redis.call('XCLAIM', unpack(command))
    local due = {}
    for _, id in ipairs(part) do
      table.insert(due, deadline)
      table.insert(due, id)
    end
    redis.call('ZADD', duekey(r), unpack(due))
  end
end
return lost
"""
)

SETTLE = (
    _PRELUDE
    + _HELD
    + r"""
-- ARGV: consumer, now_us, number of outcomes, then per outcome: kind (C, S, R, D),
-- receiver, event id, attempt, detail (S: delay in us; D: letter id), letter JSON (D),
-- holds key (1/0), key ('' for none, else '=' .. key), position and entry id ('' '' when
-- unknown); then the claims to start (start_claims) -> {indexes of the outcomes
-- not held, indexes of the starts not held}
-- Completions are written per receiver at the end, a few calls for them all.
local c, now = ARGV[1], tonumber(ARGV[2])
local outcomes_end = 3 + 10 * tonumber(ARGV[3])
local lost = {}
local touched = {}
local settled = {}
local completed = {}
local others = false  -- receiver -> true: another consumer may claim now (released, a key's next)
local done_at, done_by = {}, {}  -- positions completed here, and how many deliveries each
local function finish(r, pos, id)
  redis.call('XACK', rkey(r), GROUP, id)
  redis.call('ZREM', duekey(r), id)
  redis.call('ZREM', agekey(r), id)
  redis.call('HDEL', stkey(r), pos)
  redis.call('HDEL', mvkey(r), pos)
  redis.call('HINCRBY', B .. ':counts', 'pending', -1)
  redis.call('HINCRBY', B .. ':pend', r, -1)
end
for n, claim in ipairs(held_claims(c, 5, 10, outcomes_end, 7)) do
  local i = claim.at - 1
  local kind, r, event_id, attempt = ARGV[i], claim.r, claim.event_id, claim.attempt
  local key = ARGV[i + 7] ~= '' and string.sub(ARGV[i + 7], 2) or nil
  local pos, id = claim.pos, claim.id
  local once = pos and (r .. ' ' .. id)
  if not pos or settled[once] then
    table.insert(lost, n)
  else
    settled[once] = true
    touched[r] = true
    if kind == 'R' or (key and kind ~= 'S') then
      others = others or {}
      others[r] = true
    end
    if kind == 'C' then
      completed[r] = completed[r] or {ids = {}, positions = {}, moved = {}}
      table.insert(completed[r].ids, id)
      table.insert(completed[r].positions, pos)
      if id ~= pos .. '-0' then table.insert(completed[r].moved, pos) end
      if not done_by[pos] then table.insert(done_at, pos) end
      done_by[pos] = (done_by[pos] or 0) + 1
      if key then
        redis.call('ZREM', kkey(r, key), id)
        unpark_head(r, key, now)
      end
    elseif kind == 'S' then
      local s, o = started(r, pos)
      to_ready(r, id, now + tonumber(ARGV[i + 4]))
      set_started(r, pos, s, 0)
    elseif kind == 'R' then
      local s, o = started(r, pos)
      to_ready(r, id, now)
      if s >= attempt then set_started(r, pos, attempt - 1, 0) end
    else
      finish(r, pos, id)
      redis.call('XDEL', rkey(r), id)
      local holds = ARGV[i + 6] == '1' and key
      local fieldlist = {'id', ARGV[i + 4], 'r', r, 'p', pos, 'e', id, 'l', ARGV[i + 5]}
      if key then
        table.insert(fieldlist, 'k')
        table.insert(fieldlist, key)
      end
      local dead_id = redis.call('XADD', B .. ':dead', '*', unpack(fieldlist))
      redis.call('HSET', B .. ':letters', ARGV[i + 4], dead_id)
      redis.call('HINCRBY', B .. ':counts', 'dead', 1)
      redis.call('HINCRBY', B .. ':deadc', r, 1)
      if holds then
        redis.call('HSETNX', B .. ':held', heldfield(r, key), event_id .. ' ' .. id)
      elseif key then
        redis.call('ZREM', kkey(r, key), id)
        unpark_head(r, key, now)
      end
    end
  end
end
if #done_at > 0 then
  local now_done = hmget(B .. ':done', done_at)
  local updates = {}
  for i, pos in ipairs(done_at) do
    table.insert(updates, pos)
    table.insert(updates, string.format('%d', tonumber(now_done[i] or '0') + done_by[pos]))
    if #updates >= 4000 then
      redis.call('HSET', B .. ':done', unpack(updates))
      updates = {}
    end
  end
  if #updates > 0 then redis.call('HSET', B .. ':done', unpack(updates)) end
end
local done = 0
for r, batch in pairs(completed) do
  local count = #batch.ids
  for first = 1, count, 4000 do
    local last = math.min(first + 3999, count)
    local ids = {unpack(batch.ids, first, last)}
    local positions = {unpack(batch.positions, first, last)}
    redis.call('XACK', rkey(r), GROUP, unpack(ids))
    redis.call('ZREM', duekey(r), unpack(ids))
    redis.call('ZREM', agekey(r), unpack(ids))
    redis.call('HDEL', stkey(r), unpack(positions))
  end
  for first = 1, #batch.moved, 4000 do  -- B:mv holds the redelivered ones only
    redis.call('HDEL', mvkey(r), unpack(batch.moved, first, math.min(first + 3999, #batch.moved)))
  end
  redis.call('HINCRBY', B .. ':pend', r, -count)
  done = done + count
end
if done > 0 then
  redis.call('HINCRBY', B .. ':counts', 'pending', -done)
  redis.call('HINCRBY', B .. ':counts', 'done', done)
end
for r, _ in pairs(touched) do trim(r) end
if others then wake(others) end
return {lost, start_claims(c, outcomes_end + 1, #ARGV)}
"""
)

UNREGISTER = (
    _PRELUDE
    + r"""
-- ARGV: consumer, now_us -> how many deliveries it held, now ready again
local c, now = ARGV[1], tonumber(ARGV[2])
local raw = redis.call('HGET', B .. ':consumers', c)
redis.call('HDEL', B .. ':consumers', c)
redis.call('ZREM', B .. ':corder', c)
local released = 0
for _, r in ipairs(redis.call('SMEMBERS', B .. ':receivers')) do
  local key = rkey(r)
  if redis.call('EXISTS', key) == 1 then
    local mine = redis.call('XPENDING', key, GROUP, '-', '+', 100000, c)
    for _, p in ipairs(mine) do
      local f = entry(r, p[1])
      to_ready(r, p[1], now)
      if f then
        local attempt = tonumber(p[4])
        local s, o = started(r, f['p'])
        if s >= attempt then set_started(r, f['p'], attempt - 1, 0) end
      end
      released = released + 1
    end
    redis.call('XGROUP', 'DELCONSUMER', key, GROUP, c)
  end
end
if released > 0 then wake() end
return released
"""
)

LEASES = (
    _PRELUDE
    + r"""
-- -> {receiver, entry id, consumer, attempt, expires us, position, name, key or false, ...}
local out = {}
for _, r in ipairs(redis.call('SMEMBERS', B .. ':receivers')) do
  local key = rkey(r)
  if redis.call('EXISTS', key) == 1 then
    for _, p in ipairs(redis.call('XPENDING', key, GROUP, '-', '+', 1000000)) do
      if string.sub(p[2], 1, 1) ~= '~' then
        local f = entry(r, p[1])
        if f then
          local ev = event_body(f['p'])
          table.insert(out, r)
          table.insert(out, ev and ev['i'] or '')
          table.insert(out, p[2])
          table.insert(out, p[4])
          table.insert(out, redis.call('ZSCORE', duekey(r), p[1]) or '0')
          table.insert(out, tonumber(f['p']))
          table.insert(out, ev and ev['n'] or '')
          table.insert(out, f['k'] or false)
        end
      end
    end
  end
end
return out
"""
)

BACKLOG = (
    _PRELUDE
    + r"""
-- ARGV: now_us -> {receiver, pending, scheduled, leased, dead, oldest us or false, ...}
local now = tonumber(ARGV[1])
local out = {}
local pend = fields(redis.call('HGETALL', B .. ':pend'))
local dead = fields(redis.call('HGETALL', B .. ':deadc'))
local names = {}
for r, _ in pairs(pend) do names[r] = true end
for r, _ in pairs(dead) do names[r] = true end
for r, _ in pairs(names) do
  local pending_n = tonumber(pend[r] or '0')
  local dead_n = tonumber(dead[r] or '0')
  local leased, scheduled = 0, 0
  local oldest = false
  local key = rkey(r)
  if pending_n > 0 and redis.call('EXISTS', key) == 1 then
    local summary = redis.call('XPENDING', key, GROUP)
    for _, pair in ipairs(summary[4] or {}) do
      if string.sub(pair[1], 1, 1) ~= '~' then leased = leased + tonumber(pair[2]) end
    end
    for _, p in ipairs(redis.call('XPENDING', key, GROUP, '-', '+', 1000000, '~ready')) do
      if tonumber(redis.call('ZSCORE', duekey(r), p[1]) or '0') > now then
        scheduled = scheduled + 1
      end
    end
    local first = redis.call('ZRANGE', agekey(r), 0, 0, 'WITHSCORES')
    if #first > 0 then oldest = tonumber(first[2]) end
  end
  if pending_n > 0 or dead_n > 0 then
    table.insert(out, r)
    table.insert(out, pending_n)
    table.insert(out, scheduled)
    table.insert(out, leased)
    table.insert(out, dead_n)
    table.insert(out, oldest and string.format('%d', oldest) or false)
  end
end
return out
"""
)

PENDING = (
    _PRELUDE
    + r"""
-- ARGV: receiver, after (an entry id, exclusive; '-' to start), count, upto position
-- -> {next after or false, then per pending delivery: position, attempts started}
-- Entries acknowledged are trimmed only approximately, so each entry read is checked:
-- pending if unread by the group or in its PEL.
local r, after, count, upto = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local key = rkey(r)
if redis.call('EXISTS', key) == 0 then return {false} end
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local info = fields(g)
  if info['name'] == GROUP then last = info['last-delivered-id'] end
end
local function after_last(id)
  local ms, seq = string.match(id, '(%d+)-(%d+)')
  local lms, lseq = string.match(last, '(%d+)-(%d+)')
  ms, seq, lms, lseq = tonumber(ms), tonumber(seq), tonumber(lms), tonumber(lseq)
  return ms > lms or (ms == lms and seq > lseq)
end
local start = after == '-' and '-' or '(' .. after
local found = redis.call('XRANGE', key, start, '+', 'COUNT', count)
local out = {false}
for _, e in ipairs(found) do
  local pos = tonumber(fields(e[2])['p'])
  if pos <= upto and (after_last(e[1]) or pending(r, e[1])) then
    table.insert(out, pos)
    table.insert(out, (started(r, pos)))
  end
end
if #found == count then out[1] = found[#found][1] end
return out
"""
)

EVENTS_AT = (
    _PRELUDE
    + r"""
-- ARGV: positions -> the body of each event, or false when it was pruned
local out = {}
for i = 1, #ARGV do
  local ev = event_body(ARGV[i])
  table.insert(out, ev and ev['b'] or false)
end
return out
"""
)

REDELIVER = (
    _PRELUDE
    + r"""
-- ARGV: all (1/0), letter ids... -> how many
local chosen = {}
if ARGV[1] == '1' then
  for _, e in ipairs(redis.call('XRANGE', B .. ':dead', '-', '+')) do
    table.insert(chosen, e[1])
  end
else
  for i = 2, #ARGV do
    local id = redis.call('HGET', B .. ':letters', ARGV[i])
    if id then table.insert(chosen, id) end
  end
end
local head = redis.call('GET', B .. ':seq') or '0'
local count = 0
for _, dead_id in ipairs(chosen) do
  local found = redis.call('XRANGE', B .. ':dead', dead_id, dead_id)
  if #found > 0 then
    local f = fields(found[1][2])
    local r, pos, key = f['r'], f['p'], f['k']
    redis.call('XDEL', B .. ':dead', dead_id)
    redis.call('HDEL', B .. ':letters', f['id'])
    local id
    if key then
      id = redis.call('XADD', rkey(r), head .. '-*', 'p', pos, 'k', key)
      local field = heldfield(r, key)
      local holder = redis.call('HGET', B .. ':held', field)
      if holder and string.match(holder, ' (.*)$') == f['e'] then
        redis.call('HDEL', B .. ':held', field)
      end
      redis.call('ZREM', kkey(r, key), f['e'])
      redis.call('ZADD', kkey(r, key), pos, id)
    else
      id = redis.call('XADD', rkey(r), head .. '-*', 'p', pos)
    end
    redis.call('HSET', mvkey(r), pos, id)
    redis.call('HDEL', stkey(r), pos)
    local ev = event_body(pos)
    if ev then redis.call('ZADD', agekey(r), ev['t'], id) end
    redis.call('HINCRBY', B .. ':counts', 'dead', -1)
    redis.call('HINCRBY', B .. ':counts', 'pending', 1)
    redis.call('HINCRBY', B .. ':deadc', r, -1)
    redis.call('HINCRBY', B .. ':pend', r, 1)
    count = count + 1
  end
end
if count > 0 then wake() end
return count
"""
)

DISCARD = (
    _PRELUDE
    + r"""
-- ARGV: now_us, letter ids... -> how many were discarded
-- A discarded letter is gone for good: its delivery counts as done (never run), and a
-- key it held lets the next delivery of its key go.
local now = tonumber(ARGV[1])
local count = 0
for i = 2, #ARGV do
  local dead_id = redis.call('HGET', B .. ':letters', ARGV[i])
  local found = dead_id and redis.call('XRANGE', B .. ':dead', dead_id, dead_id) or {}
  if #found > 0 then
    local f = fields(found[1][2])
    local r, pos, key = f['r'], f['p'], f['k']
    redis.call('XDEL', B .. ':dead', dead_id)
    redis.call('HDEL', B .. ':letters', ARGV[i])
    redis.call('HINCRBY', B .. ':counts', 'dead', -1)
    redis.call('HINCRBY', B .. ':deadc', r, -1)
    redis.call('HINCRBY', B .. ':counts', 'done', 1)
    redis.call('HINCRBY', B .. ':done', pos, 1)
    if key then
      local field = heldfield(r, key)
      local holder = redis.call('HGET', B .. ':held', field)
      if holder and string.match(holder, ' (.*)$') == f['e'] then
        redis.call('HDEL', B .. ':held', field)
      end
      redis.call('ZREM', kkey(r, key), f['e'])
      unpark_head(r, key, now)
    end
    count = count + 1
  end
end
if count > 0 then wake() end
return count
"""
)

RELEASE_KEY = (
    _PRELUDE
    + r"""
-- ARGV: receiver, key, now_us -> 1 if it was held
local r, key = ARGV[1], ARGV[2]
local field = heldfield(r, key)
local holder = redis.call('HGET', B .. ':held', field)
if not holder then return 0 end
redis.call('HDEL', B .. ':held', field)
redis.call('ZREM', kkey(r, key), string.match(holder, ' (.*)$'))
unpark_head(r, key, tonumber(ARGV[3]))
wake()
return 1
"""
)

PRUNE = (
    _PRELUDE
    + r"""
-- ARGV: cutoff us ('' for none), room, cursor ('-' to start), scan budget, stop (1/0)
-- -> {removed, next cursor or false}
-- With stop, the scan ends at the first event not older than the cutoff (the events
-- after it are about as new, give or take the publishers' clocks): the retention pass
-- reads only the events it may prune, not the whole stream.
local cutoff = ARGV[1] ~= '' and tonumber(ARGV[1]) or nil
local room = tonumber(ARGV[2])
local cursor = ARGV[3]
local budget = tonumber(ARGV[4])
local stop = ARGV[5] == '1'
local reached = false
local removed = 0
local events = B .. ':events'
local batch = redis.call('XRANGE', events, cursor, '+', 'COUNT', budget)
local next_cursor = false
for _, e in ipairs(batch) do
  if removed >= room then
    next_cursor = e[1]
    break
  end
  local f = fields(e[2])
  if stop and cutoff and tonumber(f['t']) >= cutoff then
    reached = true
    break
  end
  if not cutoff or tonumber(f['t']) < cutoff then
    local pos = string.match(e[1], '^(%d+)')
    local done = tonumber(redis.call('HGET', B .. ':done', pos) or '0')
    local take = math.min(done, room - removed)
    -- deliveries not pruned: the event's count of receivers until a prune took some
    local left = tonumber(redis.call('HGET', B .. ':left', pos) or f['r'] or '0')
    if take > 0 then
      redis.call('HINCRBY', B .. ':done', pos, -take)
      redis.call('HINCRBY', B .. ':counts', 'done', -take)
      left = left - take
      redis.call('HSET', B .. ':left', pos, left)
      removed = removed + take
    end
    if left <= 0 then
      redis.call('XDEL', events, e[1])
      redis.call('HDEL', B .. ':ids', f['i'])
      redis.call('HDEL', B .. ':left', pos)
      redis.call('HDEL', B .. ':done', pos)
      redis.call('HINCRBY', B .. ':counts', 'events', -1)
    end
  end
end
if not next_cursor and not reached and #batch == budget then
  next_cursor = '(' .. batch[#batch][1]
end
return {removed, next_cursor}
"""
)

FORGET = (
    _PRELUDE
    + r"""
-- ARGV: before us, max -> how many forgotten
local keys = redis.call('ZRANGEBYSCORE', B .. ':idemt', '-inf', '(' .. ARGV[1], 'LIMIT', 0,
                        tonumber(ARGV[2]))
for _, k in ipairs(keys) do
  redis.call('DEL', B .. ':idem:' .. k)
  redis.call('ZREM', B .. ':idemt', k)
end
return #keys
"""
)

SCRIPTS = {name: globals()[name] for name in __all__}
"""Every script by name, as the store loads them."""
