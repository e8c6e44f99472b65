package haproxy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// hopLua removes the headers that a message's Connection header names
// (RFC 9110, 7.6.1), as the built-in proxy does: HAProxy takes the close
// and keep-alive tokens out of Connection itself, but passes on every
// header the others name. The backends call it only for messages that
// still carry a Connection header after HAProxy's parsing (upgrades, and
// those that name headers): the others cost nothing. The headers the
// frontend decides or sets (Host, X-Forwarded-For) stay, and so does the
// upgrade token, which HAProxy's upgrades need.
const hopLua = `-- Written by the switchboard sidecar; changes are overwritten.
local spared = { ["host"] = true, ["x-forwarded-for"] = true }

local function strip(hdrs, del, set)
  local v = hdrs["connection"]
  if v == nil then return end
  local kept = {}
  for _, line in pairs(v) do
    for tok in string.gmatch(line, "[^,%s]+") do
      local name = string.lower(tok)
      if name == "upgrade" or name == "close" or name == "keep-alive" then
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
  strip(txn.http:req_get_headers(),
    function(n) txn.http:req_del_header(n) end,
    function(n, v) txn.http:req_set_header(n, v) end)
end)

core.register_action("sb_hop_res", { "http-res" }, function(txn)
  strip(txn.http:res_get_headers(),
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

// writeHopLua writes hopLua into dir and returns its path.
func writeHopLua(dir string) (string, error) {
	path := filepath.Join(dir, "hop.lua")
	if err := os.WriteFile(path, []byte(hopLua), 0o600); err != nil {
		return "", fmt.Errorf("haproxy: %w", err)
	}
	return path, nil
}
