//go:build !unix

package proxy

import "net"

// alive cannot peek here: a connection the instance closed shows when it
// is used (and a replayable request is then sent again).
func alive(net.Conn) bool { return true }
