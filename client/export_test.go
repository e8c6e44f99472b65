package client

// SetDefaultSidecar moves the default sidecar address for a test.
func SetDefaultSidecar(addr string) (restore func()) {
	old := defaultSidecar
	defaultSidecar = addr
	return func() { defaultSidecar = old }
}
