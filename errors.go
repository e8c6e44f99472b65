package switchboard

import (
	"errors"
	"fmt"
	"net/http"
)

// Error codes. Every error that crosses the API carries one of these; the
// table in HTTPStatus maps each to one HTTP status, for server and client alike.
const (
	EInvalid          = "invalid_argument"
	EUnauthenticated  = "unauthenticated"
	EPermissionDenied = "permission_denied"
	ENotFound         = "not_found"
	EConflict         = "conflict"
	ETooLarge         = "too_large"
	EUnsupportedMedia = "unsupported_media_type"
	EUnavailable      = "unavailable"
	EInternal         = "internal"
	// The sidecar's own answers when the instances it tried failed
	// (502) or did not answer in time (504).
	EBadGateway       = "bad_gateway"
	EDeadlineExceeded = "deadline_exceeded"
)

var statusByCode = map[string]int{
	EInvalid:          http.StatusBadRequest,
	EUnauthenticated:  http.StatusUnauthorized,
	EPermissionDenied: http.StatusForbidden,
	ENotFound:         http.StatusNotFound,
	EConflict:         http.StatusConflict,
	ETooLarge:         http.StatusRequestEntityTooLarge,
	EUnsupportedMedia: http.StatusUnsupportedMediaType,
	EUnavailable:      http.StatusServiceUnavailable,
	EInternal:         http.StatusInternalServerError,
	EBadGateway:       http.StatusBadGateway,
	EDeadlineExceeded: http.StatusGatewayTimeout,
}

// Transient reports whether err may go away when the call is made again,
// later or to another replica: its code is unavailable, bad_gateway or
// deadline_exceeded.
func Transient(err error) bool {
	switch ErrorCode(err) {
	case EUnavailable, EBadGateway, EDeadlineExceeded:
		return true
	}
	return false
}

// Error is an error meant for the user: a code from the table above and a
// message that names the field and the rule. Errors of other types are
// internal: their text never leaves the process.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EInternal for
// any other non-nil error and "" for nil.
func ErrorCode(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EInternal
}

// ErrorMessage returns the user-facing message of err: the message of its
// *Error, or a generic text that leaks nothing for any other error.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// HTTPStatus returns the HTTP status for an error code (500 for unknown codes).
func HTTPStatus(code string) int {
	if s, ok := statusByCode[code]; ok {
		return s
	}
	return http.StatusInternalServerError
}

// CodeForStatus is the inverse of HTTPStatus, for clients that receive an
// error status without a parseable body.
func CodeForStatus(status int) string {
	for code, s := range statusByCode {
		if s == status {
			return code
		}
	}
	if status >= 500 {
		return EUnavailable
	}
	return EInvalid
}
