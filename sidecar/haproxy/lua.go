package haproxy

import (
	"fmt"
	"os"
)

// luaFile is the name, in the driver's directory, of the Lua code the
// config loads.
const luaFile = "switchboard.lua"

// luaActions are the Lua actions and converters the config calls, where
// HAProxy's own rules cannot do what the built-in proxy does:
//
// sb_hop_req and sb_hop_res remove the headers that a message's Connection
// header names (RFC 9110, 7.6.1), as the built-in proxy does: HAProxy
// takes the close and keep-alive tokens out of Connection itself, but
// passes on every header the others name. The backends call them before
// their other rules but the timeout's, and only for messages that still
// carry a Connection header after HAProxy's parsing (upgrades, and those
// that name headers): the others cost nothing. The headers the frontend
// decides or sets (Host, X-Forwarded-For) and those that frame the body
// stay. The upgrade token, and Upgrade, stay on a request that asks for
// one and on a 101 answer (HAProxy's upgrades need them); elsewhere they
// go, as in the built-in proxy (an answer's "Connection: Upgrade,
// Upgrade: h2c" is the instance's business, not the caller's).
//
// sb_timeout_ms reads Switchboard-Timeout as the built-in proxy reads it
// (sb.ParseTimeout: Go's duration syntax, from 1ms to 1h): the timeout in
// milliseconds, rounded up; 0 for an empty value, which names no timeout
// there either; -1 for a value it refuses, whose 400 body
// sb_timeout_error writes. They are converters, not an action: HAProxy
// calls a converter for about 3 µs of CPU here, an action for 5.
// go_duration follows time.ParseDuration step by step, its overflow rules
// included, so that both proxies take and refuse the same values
// (FuzzTimeoutHeader holds them to it); it gives up early, as invalid, on
// any value that is sure to exceed an hour.
const luaActions = `-- Written by the switchboard sidecar; changes are overwritten.
local spared = { ["host"] = true, ["x-forwarded-for"] = true,
  ["content-length"] = true, ["transfer-encoding"] = true }

local function strip(hdrs, upgrading, del, set)
  local v = hdrs["connection"]
  if v == nil then return end
  local kept = {}
  for _, line in pairs(v) do
    for tok in string.gmatch(line, "[^,%s]+") do
      local name = string.lower(tok)
      if name == "close" or name == "keep-alive" or (name == "upgrade" and upgrading) then
        kept[#kept + 1] = tok
      elseif not spared[name] then
        del(name)
      end
    end
  end
  if #kept == 0 then
    del("connection")
  else
    set("connection", table.concat(kept, ", "))
  end
end

core.register_action("sb_hop_req", { "http-req" }, function(txn)
  local hdrs = txn.http:req_get_headers()
  strip(hdrs, hdrs["upgrade"] ~= nil,
    function(n) txn.http:req_del_header(n) end,
    function(n, v) txn.http:req_set_header(n, v) end)
end)

core.register_action("sb_hop_res", { "http-res" }, function(txn)
  strip(txn.http:res_get_headers(), txn.sf:status() == 101,
    function(n) txn.http:res_del_header(n) end,
    function(n, v) txn.http:res_set_header(n, v) end)
end)

local HOUR = 3600000000000 -- nanoseconds
local MS = 1000000
local units = { ["ns"] = 1, ["us"] = 1000, ["\xC2\xB5s"] = 1000, ["\xCE\xBCs"] = 1000,
  ["ms"] = MS, ["s"] = 1000000000, ["m"] = 60000000000, ["h"] = HOUR }

local function digit(s, i)
  local b = s:byte(i)
  if b ~= nil and b >= 48 and b <= 57 then return b - 48 end
  return nil
end

-- go_duration returns what time.ParseDuration makes of s, in
-- nanoseconds, or nil when it refuses s or when the result would be
-- over an hour.
local function go_duration(s)
  local i, n, neg = 1, #s, false
  local c = s:sub(1, 1)
  if c == "-" or c == "+" then
    neg = c == "-"
    i = 2
  end
  if s:sub(i) == "0" then return 0 end
  if i > n then return nil end
  local d = 0
  while i <= n do
    -- [0-9]*: past an hour of nanoseconds, s is refused either way.
    local v, start = 0, i
    while true do
      local x = digit(s, i)
      if x == nil then break end
      v = v * 10 + x
      if v > HOUR then return nil end
      i = i + 1
    end
    local pre = i > start
    -- (\.[0-9]*)?, as time's leadingFraction: digits past 2^63 are
    -- dropped, and f may reach 2^63 itself (a float here).
    local f, scale, post = 0, 1.0, false
    if s:byte(i) == 46 then
      i = i + 1
      start = i
      local over = false
      while true do
        local x = digit(s, i)
        if x == nil then break end
        if not over then
          if f > 922337203685477580 or (f == 922337203685477580 and x > 8) then
            over = true
          elseif f == 922337203685477580 and x == 8 then
            f = 2.0 ^ 63
            scale = scale * 10
          else
            f = f * 10 + x
            scale = scale * 10
          end
        end
        i = i + 1
      end
      post = i > start
    end
    if not pre and not post then return nil end
    -- The unit: everything up to the next digit or '.'.
    start = i
    while i <= n do
      local b = s:byte(i)
      if b == 46 or (b >= 48 and b <= 57) then break end
      i = i + 1
    end
    local unit = units[s:sub(start, i - 1)]
    if unit == nil then return nil end
    if v > HOUR // unit then return nil end
    v = v * unit
    if f > 0 then v = v + math.floor(f * (unit / scale)) end
    d = d + v
    if d > HOUR then return nil end
  end
  if neg then return -d end
  return d
end

-- quote is sb.quoteValue: printable ASCII as it is, \" and \\ escaped,
-- other bytes as \xNN, at most the first 64 bytes (then "...").
local function quote(s)
  local more = ""
  if #s > 64 then s, more = s:sub(1, 64), "..." end
  return '"' .. s:gsub('[\\"]', '\\%0'):gsub('[^ -~]', function(b)
    return string.format("\\x%02x", b:byte())
  end) .. '"' .. more
end

local function json_string(s)
  return '"' .. s:gsub('[\\"]', '\\%0') .. '"'
end

core.register_converters("sb_timeout_ms", function(v)
  if v == "" then return 0 end
  local d = go_duration(v)
  if d ~= nil and d >= MS and d <= HOUR then return (d + MS - 1) // MS end
  return -1
end)

core.register_converters("sb_timeout_error", function(v)
  return '{"error":{"code":"invalid_argument","message":' .. json_string(
    "Switchboard-Timeout: must be a duration from 1ms to 1h such as 2s, got " .. quote(v)) .. '}}'
end)
`

// writeLua writes luaActions to path, whole or not at all (it leaves a file
// that holds it already as it is). The driver writes it before every
// check of a config, as it does the config: a file removed or damaged
// since (a cleaned directory) would otherwise have every later config
// refused, and HAProxy not restart.
func writeLua(path string) error {
	if b, err := os.ReadFile(path); err == nil && string(b) == luaActions {
		return nil
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(luaActions), 0o600); err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	return nil
}
