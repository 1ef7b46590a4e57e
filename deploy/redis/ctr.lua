#!lua name=ctr
--[[
ctr.lua - the Redis Functions library `ctr` (Redis 7): atomic writes to the
feature store that any client can make with one command.

    FCALL ctr_append 1 ctr:u:42 17 19 23
    FCALL ctr_append_max 1 ctr:u:42 500 17 19 23
    FCALL ctr_append_many 2 ctr:u:42 ctr:u:43 1000 2 1 17 19 23
    FCALL ctr_item_changes 1 ctr:item-changes 1000 0 17 19
    FCALL_RO ctr_version 0

ctr-load loads it (FUNCTION LOAD REPLACE, on every master of a cluster)
before it writes anything; a producer can load it the same way:

    redis-cli -x FUNCTION LOAD REPLACE < deploy/redis/ctr.lua

Workload: appends arrive one behaviour (a click) at a time from stream
jobs and ad servers, thousands a second per Redis, while the scorer reads
the same values.  Each function runs atomically (Redis runs one function
at a time), so a reader sees a value either before or after an append,
never half of one, and two producers appending to one user at once lose
no id.

The values are those of deploy/REDIS_SCHEMA.md (proto/features.h is the
reference): a user value is an 8-byte header, 'C' 'U' version 0 and a u32,
then int32 item ids, oldest first, all little-endian.  Version 2, written
here and by ctr-load, keeps max_seq in the u32; the number of ids is
(length - 8) / 4.  An append is therefore an APPEND of the new ids, O(ids
appended), and the value is rewritten only when it has grown past
max_seq + max(1, floor(max_seq / 4)) ids: then it keeps its most recent
max_seq.  So a long-lived user costs one rewrite every max_seq / 4
appends, not one per click.  A version 1 value (the count in the u32,
written before appends existed) becomes version 2 on its first append, by
rewriting its 8-byte header only.
]]

local LIBRARY_VERSION = 1
local DEFAULT_MAX_SEQ = 1000     -- ctr-load's --max-seq default
local MAX_ID = 2147483647

-- A decimal id 0..2^31-1, or nil.  Only plain digits: "1e3", "0x10",
-- " 7" and "-1" are refused rather than read as something else.
local function parse_id(s)
    if type(s) ~= 'string' or #s == 0 or #s > 10 or not s:match('^%d+$') then
        return nil
    end
    local v = tonumber(s)
    if v > MAX_ID then return nil end
    return v
end

local function u32(v)
    return struct.pack('<I4', v)
end

local function header(max_seq)
    return 'CU\2\0' .. u32(max_seq)
end

local function trim_at(max_seq)
    local slack = math.floor(max_seq / 4)
    if slack < 1 then slack = 1 end
    return max_seq + slack
end

-- The ids in args[first..] packed as int32 LE, and their number; or nil and
-- an error message naming the bad argument.
local function pack_ids(args, first, fname)
    local parts = {}
    for i = first, #args do
        local v = parse_id(args[i])
        if not v then
            return nil, fname .. ': argument ' .. i .. ' ("' .. tostring(args[i]):sub(1, 32) ..
                '") is not an item id 0..' .. MAX_ID
        end
        parts[#parts + 1] = u32(v)
    end
    if #parts == 0 then
        return nil, fname .. ': no item ids to append'
    end
    return table.concat(parts), #parts
end

-- Appends the packed ids (n of them) to the user value at key.  max_seq:
-- the value's new max_seq, or nil to keep its own (DEFAULT_MAX_SEQ for a
-- new user or a version 1 value).  Returns the number of ids the value
-- holds afterwards.
local function append(key, packed, n, max_seq, fname)
    local len = redis.pcall('STRLEN', key)
    if type(len) == 'table' then             -- WRONGTYPE: not a string
        return redis.error_reply(fname .. ': ' .. key .. ': ' .. tostring(len.err))
    end
    if len == 0 then
        local m = max_seq or DEFAULT_MAX_SEQ
        if n > m then
            packed = packed:sub(-4 * m)
            n = m
        end
        redis.call('SET', key, header(m) .. packed)
        return n
    end
    local h = redis.call('GETRANGE', key, 0, 7)
    if #h < 8 or h:sub(1, 2) ~= 'CU' or h:byte(4) ~= 0 or (len - 8) % 4 ~= 0 then
        return redis.error_reply(fname .. ': ' .. key .. ' does not hold a user value')
    end
    local version = h:byte(3)
    local word = struct.unpack('<I4', h, 5)
    local count = (len - 8) / 4
    local m
    if version == 1 then
        if word ~= count then
            return redis.error_reply(fname .. ': ' .. key ..
                ' holds a version 1 user value whose count disagrees with its length')
        end
        m = max_seq or DEFAULT_MAX_SEQ
    elseif version == 2 then
        if word == 0 then
            return redis.error_reply(fname .. ': ' .. key .. ' holds a user value with max_seq 0')
        end
        m = max_seq or word
    else
        return redis.error_reply(fname .. ': ' .. key .. ' holds a user value of version ' ..
            version .. '; this library writes 1 and 2')
    end
    count = count + n
    if count > trim_at(m) then
        -- The one rewrite: the most recent m ids under the header.  The
        -- old ids still needed are read before the value is replaced.
        local keep_old = m - n
        local body
        if keep_old > 0 then
            body = redis.call('GETRANGE', key, -4 * keep_old, -1) .. packed
        else
            body = packed:sub(-4 * m)
        end
        redis.call('SET', key, header(m) .. body, 'KEEPTTL')
        return m
    end
    if version ~= 2 or word ~= m then
        redis.call('SETRANGE', key, 0, header(m))
    end
    redis.call('APPEND', key, packed)
    return count
end

-- FCALL ctr_append 1 <prefix>u:<user_id> ID [ID ...]
-- Appends the ids in order; creates the user (max_seq 1000) if missing.
-- Replies the number of ids the history holds afterwards.
local function ctr_append(keys, args)
    if #keys ~= 1 then
        return redis.error_reply('ctr_append: give one key, the user\'s (FCALL ctr_append 1 KEY ID...)')
    end
    local packed, n = pack_ids(args, 1, 'ctr_append')
    if not packed then return redis.error_reply(n) end
    return append(keys[1], packed, n, nil, 'ctr_append')
end

-- FCALL ctr_append_max 1 <prefix>u:<user_id> MAX_SEQ ID [ID ...]
-- As ctr_append, and the value keeps MAX_SEQ ids from now on (ctr-load
-- --events passes its --max-seq).
local function ctr_append_max(keys, args)
    if #keys ~= 1 then
        return redis.error_reply('ctr_append_max: give one key, the user\'s')
    end
    local m = parse_id(args[1])
    if not m or m < 1 then
        return redis.error_reply('ctr_append_max: MAX_SEQ ("' .. tostring(args[1]):sub(1, 32) ..
            '") must be an integer 1..' .. MAX_ID)
    end
    local packed, n = pack_ids(args, 2, 'ctr_append_max')
    if not packed then return redis.error_reply(n) end
    return append(keys[1], packed, n, m, 'ctr_append_max')
end

-- FCALL ctr_append_many K KEY_1 .. KEY_K MAX_SEQ N_1 .. N_K ID ...
-- Bulk appends for a loader (ctr-load --events): K users at once, user i
-- getting the next N_i ids, each as ctr_append_max with MAX_SEQ; one call
-- instead of K (on a Redis Cluster every key must be in one hash slot, as
-- for any multi-key call).  The arguments are checked before anything is
-- written; then each user is appended on its own: replies an array of K,
-- the ids user i holds afterwards, or an error for a key that does not
-- hold a user value (that user is left as it was, the others appended).
local function ctr_append_many(keys, args)
    local k = #keys
    local m = parse_id(args[1])
    if k < 1 or not m or m < 1 then
        return redis.error_reply('ctr_append_many: K >= 1 keys, then MAX_SEQ >= 1')
    end
    if #args < 1 + k then
        return redis.error_reply('ctr_append_many: give N_1 .. N_K after MAX_SEQ')
    end
    local at = 2 + k
    local packs = {}
    for i = 1, k do
        local n = parse_id(args[1 + i])
        if not n or n < 1 or at + n - 1 > #args then
            return redis.error_reply('ctr_append_many: N_' .. i .. ' is not a count of the ids left')
        end
        local parts = {}
        for j = at, at + n - 1 do
            local v = parse_id(args[j])
            if not v then
                return redis.error_reply('ctr_append_many: argument ' .. j .. ' is not an item id')
            end
            parts[#parts + 1] = u32(v)
        end
        packs[i] = table.concat(parts)
        at = at + n
    end
    if at ~= #args + 1 then
        return redis.error_reply('ctr_append_many: more ids than N_1 .. N_K count')
    end
    local out = {}
    for i = 1, k do
        out[i] = append(keys[i], packs[i], #packs[i] / 4, m, 'ctr_append_many')
    end
    return out
end

-- FCALL ctr_item_changes 1 <prefix>item-changes MAXLEN FLOOR ID [ID ...]
-- Records that the features of these items changed: one entry
-- {gen, ids} on the stream, capped near MAXLEN entries (XADD MAXLEN ~).
-- gen counts on from the stream's last entry (1, 2, ...), and from FLOOR
-- when that is higher: the generation the writer knows was reached (the
-- feature-set marker's), so a stream deleted and begun again does not go
-- back.  A reader that sees gen jump knows it missed entries (the cap
-- trimmed them).  Replies gen.
local function ctr_item_changes(keys, args)
    if #keys ~= 1 then
        return redis.error_reply('ctr_item_changes: give one key, the stream\'s')
    end
    local maxlen = parse_id(args[1])
    if not maxlen or maxlen < 1 then
        return redis.error_reply('ctr_item_changes: MAXLEN must be an integer >= 1')
    end
    local floor = args[2] and args[2]:match('^%d+$') and tonumber(args[2])
    if not floor then
        return redis.error_reply('ctr_item_changes: FLOOR must be an integer >= 0')
    end
    local ids = {}
    for i = 3, #args do
        if not parse_id(args[i]) then
            return redis.error_reply('ctr_item_changes: argument ' .. i .. ' is not an item id')
        end
        ids[#ids + 1] = args[i]
    end
    if #ids == 0 then
        return redis.error_reply('ctr_item_changes: no item ids')
    end
    local gen = floor
    local last = redis.call('XREVRANGE', keys[1], '+', '-', 'COUNT', 1)
    if last[1] then
        local f = last[1][2]
        for i = 1, #f - 1, 2 do
            if f[i] == 'gen' and (tonumber(f[i + 1]) or 0) > gen then gen = tonumber(f[i + 1]) end
        end
    end
    gen = gen + 1
    redis.call('XADD', keys[1], 'MAXLEN', '~', maxlen, '*', 'gen', string.format('%d', gen),
               'ids', table.concat(ids, ' '))
    return gen
end

-- FCALL_RO ctr_version 0: this library's version, to check it is loaded.
local function ctr_version()
    return LIBRARY_VERSION
end

redis.register_function('ctr_append', ctr_append)
redis.register_function('ctr_append_max', ctr_append_max)
redis.register_function('ctr_append_many', ctr_append_many)
redis.register_function('ctr_item_changes', ctr_item_changes)
redis.register_function{function_name = 'ctr_version', callback = ctr_version,
                        flags = {'no-writes'}}
