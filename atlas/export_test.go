package atlas

import (
	"context"
	"slices"
)

// WaitKeys returns how many watch keys have a wait channel (blocking
// queries) plus how many have event streams subscribed: what the queries
// and streams waiting now hold.
func (s *Server) WaitKeys() int {
	s.st.wmu.Lock()
	defer s.st.wmu.Unlock()
	return len(s.st.waits) + len(s.st.subs)
}

// ResKeys returns how many watch keys the state keeps an index for apart
// from its live instances' records.
func (s *Server) ResKeys() int {
	s.st.mu.RLock()
	defer s.st.mu.RUnlock()
	return len(s.st.res)
}

// StorePrefixes are the prefixes of the keys Atlas keeps in its store.
var StorePrefixes = []string{pfxInstance, pfxSwitch, pfxLayer, pfxToken, pfxPort, pfxPortUsed, pfxPolicy}

// WaitApplied returns once the server has applied the store's write at
// index.
func (s *Server) WaitApplied(ctx context.Context, index uint64) error {
	return s.waitApplied(ctx, index)
}

// ReloadWithout replaces the server's memory, as a reload after a gap in
// the store's history does, with the store's entries less key, one index
// past the store's: the reload of a store that deleted key meanwhile.
func (s *Server) ReloadWithout(ctx context.Context, key string) error {
	index, kvs, err := s.store.Snapshot(ctx)
	if err != nil {
		return err
	}
	kvs = slices.DeleteFunc(kvs, func(kv KV) bool { return kv.Key == key })
	s.st.load(index+1, kvs)
	return nil
}

// WaitingOn returns the watch keys that have a wait channel or an event
// stream subscribed, sorted.
func (s *Server) WaitingOn() []string {
	s.st.wmu.Lock()
	defer s.st.wmu.Unlock()
	keys := make([]string, 0, len(s.st.waits)+len(s.st.subs))
	for k := range s.st.waits {
		keys = append(keys, k)
	}
	for k := range s.st.subs {
		if _, ok := s.st.waits[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
