package switchboard

import (
	"errors"
	"fmt"
	"testing"
)

func TestTransient(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{Errorf(EUnavailable, "x"), true},
		{Errorf(EBadGateway, "x"), true},
		{fmt.Errorf("wrapped: %w", Errorf(EDeadlineExceeded, "x")), true},
		{Errorf(ENotFound, "x"), false},
		{Errorf(EConflict, "x"), false},
		{errors.New("internal"), false},
	} {
		if got := Transient(tt.err); got != tt.want {
			t.Errorf("Transient(%v) = %v; want %v", tt.err, got, tt.want)
		}
	}
}
