#!lua name=ctr
--[[
ctr.lua - the Redis Functions library `ctr` (Redis 7): atomic writes to the
feature store that any client can make with one command.

    FCALL ctr_append 1 ctr:u:42 17 19 23
    FCALL ctr_append_max 1 ctr:u:42 500 17 19 23
    FCALL ctr_append_packed 2 ctr:u:42 ctr:u:43 1000 <17 19 as int32 LE> <23 ...>
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

-- The numbers of vals as int32 LE, in a few struct.pack calls (one per 64).
local function pack_all(vals)
    local out, n = {}, #vals
    for i = 1, n, 64 do
        local j = math.min(n, i + 63)
        out[#out + 1] = struct.pack('<' .. string.rep('I4', j - i + 1), unpack(vals, i, j))
    end
    return table.concat(out)
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
    local vals = {}
    for i = first, #args do
        local v = parse_id(args[i])
        if not v then
            return nil, fname .. ': argument ' .. i .. ' ("' .. tostring(args[i]):sub(1, 32) ..
                '") is not an item id 0..' .. MAX_ID
        end
        vals[#vals + 1] = v
    end
    if #vals == 0 then
        return nil, fname .. ': no item ids to append'
    end
    return pack_all(vals), #vals
end

-- Appends the packed ids (n of them) to the user value at key.  max_seq:
-- the value's new max_seq, or nil to keep its own (DEFAULT_MAX_SEQ for a
-- new user or a version 1 value).  Returns the number of ids the value
-- holds afterwards, or an error reply (the value left as it was).
--
-- The common case, a version 2 value, costs two calls: GETRANGE of the
-- header and APPEND, whose reply (the new length) gives the count; the
-- length's shape is checked after the APPEND, and a value that turns out
-- not to have been 8 + 4 n bytes is put back as it was.
local function append(key, packed, n, max_seq, fname)
    local h = redis.pcall('GETRANGE', key, '0', '7')   -- strings: no number formatting
    if type(h) == 'table' then              -- WRONGTYPE: not a string
        return redis.error_reply(fname .. ': ' .. key .. ': ' .. tostring(h.err))
    end
    if #h == 0 then                         -- a new user
        local m = max_seq or DEFAULT_MAX_SEQ
        if n > m then
            packed = packed:sub(-4 * m)
            n = m
        end
        redis.call('SET', key, header(m) .. packed)
        return n
    end
    if #h < 8 or h:sub(1, 2) ~= 'CU' or h:byte(4) ~= 0 then
        return redis.error_reply(fname .. ': ' .. key .. ' does not hold a user value')
    end
    local version = h:byte(3)
    local word = struct.unpack('<I4', h, 5)
    local m
    if version == 1 then
        -- Written before appends existed: its count must agree with its
        -- length (checked first: this path is rare).
        local len = redis.call('STRLEN', key)
        if (len - 8) % 4 ~= 0 or word ~= (len - 8) / 4 then
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
    local len = redis.call('APPEND', key, packed)
    local old = len - 4 * n
    if (old - 8) % 4 ~= 0 then
        redis.call('SET', key, redis.call('GETRANGE', key, '0', tostring(old - 1)), 'KEEPTTL')
        return redis.error_reply(fname .. ': ' .. key .. ' does not hold a user value (its ' ..
            'length is not 8 + 4 n)')
    end
    local count = (len - 8) / 4
    if count > trim_at(m) then
        -- The one rewrite: the most recent m ids under the header.
        redis.call('SET', key, header(m) .. redis.call('GETRANGE', key, tostring(-4 * m), '-1'),
                   'KEEPTTL')
        return m
    end
    if version ~= 2 or word ~= m then
        redis.call('SETRANGE', key, '0', header(m))
    end
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

-- FCALL ctr_append_packed K KEY_1 .. KEY_K MAX_SEQ IDS_1 .. IDS_K
-- Bulk appends for a loader (ctr-load --events): K users at once, user i
-- getting the ids of IDS_i, packed as the value holds them (int32
-- little-endian, 4 bytes each: no decimal to parse, half the work of the
-- text form per id), each as ctr_append_max with MAX_SEQ; one call
-- instead of K (on a Redis Cluster every key must be in one hash slot, as
-- for any multi-key call).  The arguments are checked (every id 0..2^31-1)
-- before anything is written; then each user is appended on its own:
-- replies an array of K, the ids user i holds afterwards, or an error for a
-- key that does not hold a user value (that user is left as it was, the
-- others appended).
local function ctr_append_packed(keys, args)
    local k = #keys
    local m = parse_id(args[1])
    if k < 1 or not m or m < 1 or #args ~= k + 1 then
        return redis.error_reply('ctr_append_packed: K >= 1 keys, then MAX_SEQ >= 1 and K ' ..
            'packed id strings')
    end
    for i = 1, k do
        local p = args[1 + i]
        if #p == 0 or #p % 4 ~= 0 then
            return redis.error_reply('ctr_append_packed: IDS_' .. i .. ' is not 4 bytes an id')
        end
        for j = 4, #p, 4 do
            if p:byte(j) > 127 then
                return redis.error_reply('ctr_append_packed: IDS_' .. i .. ' holds a negative id')
            end
        end
    end
    local out = {}
    for i = 1, k do
        local p = args[1 + i]
        out[i] = append(keys[i], p, #p / 4, m, 'ctr_append_packed')
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
redis.register_function('ctr_append_packed', ctr_append_packed)
redis.register_function('ctr_item_changes', ctr_item_changes)
redis.register_function{function_name = 'ctr_version', callback = ctr_version,
                        flags = {'no-writes'}}
