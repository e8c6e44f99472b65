package haproxy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
)

// hopLua removes the headers that a message's Connection header names
// (RFC 9110, 7.6.1), as the built-in proxy does: HAProxy takes the close
// and keep-alive tokens out of Connection itself, but passes on every
// header the others name. The backends call it first of their rules, and
// only for messages that still carry a Connection header after HAProxy's
// parsing (upgrades, and those that name headers): the others cost
// nothing. The headers the frontend decides or sets (Host,
// X-Forwarded-For) and those that frame the body stay. The upgrade token,
// and Upgrade, stay on a request that asks for one and on a 101 answer
// (HAProxy's upgrades need them); elsewhere they go, as in the built-in
// proxy (an answer's "Connection: Upgrade, Upgrade: h2c" is the
// instance's business, not the caller's).
const hopLua = `-- Written by the switchboard sidecar; changes are overwritten.
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
`

// hasLua reports whether binary was built with Lua (`haproxy -vv` lists
// +LUA among its features): distributions' packages mostly are.
func hasLua(binary string) bool {
	out, err := exec.Command(binary, "-vv").Output()
	return err == nil && (bytes.Contains(out, []byte("+LUA")) || bytes.Contains(out, []byte("USE_LUA=1")))
}

// writeHopLua writes hopLua to path, whole or not at all (it leaves a file
// that holds it already as it is). The driver writes it before every
// check of a config, as it does the config: a file removed or damaged
// since (a cleaned directory) would otherwise have every later config
// refused, and HAProxy not restart.
func writeHopLua(path string) error {
	if b, err := os.ReadFile(path); err == nil && string(b) == hopLua {
		return nil
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(hopLua), 0o600); err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("haproxy: %w", err)
	}
	return nil
}
