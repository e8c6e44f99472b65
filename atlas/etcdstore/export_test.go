package etcdstore

// Deafen makes the store's watches drop what etcd sends (on), as a stream
// cut off without a word does, or take it again (off).
func (s *Store) Deafen(on bool) { s.deaf.Store(on) }

// Progressed reports whether etcd has shown that it answers requests for
// progress on this store (a silent watch is then ended).
func (s *Store) Progressed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.progress.armed()
}

// DropProgress makes the store's watches drop progress notifications (on),
// as etcd's gRPC proxy does, or take them again (off).
func (s *Store) DropProgress(on bool) { s.noProgress.Store(on) }

// WaitBackground waits for the store's background work (lease
// revocations) started so far.
func (s *Store) WaitBackground() { s.bg.Wait() }
