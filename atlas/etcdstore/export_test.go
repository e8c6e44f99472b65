package etcdstore

// Deafen makes the store's watches drop what etcd sends (on), as a stream
// cut off without a word does, or take it again (off).
func (s *Store) Deafen(on bool) { s.deaf.Store(on) }
