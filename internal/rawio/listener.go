package rawio

import "net"

// Listener wraps ln so that the connections it accepts are TCP's.
func Listener(ln net.Listener) net.Listener { return listener{ln} }

type listener struct{ net.Listener }

func (l listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return TCP(c), nil
}
