package atlas

import (
	"context"
	"testing"
)

// gatedIndex answers CurrentIndex with the number of its call, once the
// test lets it.
type gatedIndex struct {
	calls chan uint64   // the number of each call as it begins
	gate  chan struct{} // one receive lets one call answer
	n     uint64
}

func (g *gatedIndex) CurrentIndex(ctx context.Context) (uint64, error) {
	g.n++
	n := g.n
	g.calls <- n
	<-g.gate
	return n, nil
}

// A catch-up must not share a question to the store asked before it
// began: that answer may predate the write it looks for (a token created
// through another replica a moment before). One that arrives while a
// question is out waits for the next, which all such share.
func TestCatchUpSharesOnlyQuestionsAskedAfterIt(t *testing.T) {
	s := &Server{ctx: context.Background()}
	g := &gatedIndex{calls: make(chan uint64, 4), gate: make(chan struct{})}
	first := s.storeIndex(g)
	if n := <-g.calls; n != 1 {
		t.Fatalf("first question is call %d", n)
	}
	// Two callers arrive while the first question is out.
	second, third := s.storeIndex(g), s.storeIndex(g)
	if second == first || third != second {
		t.Fatal("callers that arrived while a question was out joined it, or did not share the next")
	}
	g.gate <- struct{}{}
	<-first.done
	if n := <-g.calls; n != 2 {
		t.Fatalf("the queued question is call %d; want 2, asked after the first ended", n)
	}
	g.gate <- struct{}{}
	<-second.done
	if first.index != 1 || second.index != 2 {
		t.Fatalf("answers %d and %d; want 1 and 2", first.index, second.index)
	}
	// Nothing out: the next caller asks anew.
	fourth := s.storeIndex(g)
	if fourth == second {
		t.Fatal("a caller joined a question already answered")
	}
	<-g.calls
	g.gate <- struct{}{}
	<-fourth.done
}
