package atlas

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	sb "github.com/switchboard-go/switchboard"
)

// A token's text is "sb." + id + "." + secret. Only the SHA-256 of the
// secret is stored; the secret has 256 bits of entropy, so a plain hash is
// enough, and it is compared in constant time.
const tokenPrefix = "sb."

func newToken(req sb.TokenRequest, now time.Time) (string, tokenRecord, error) {
	idb := make([]byte, 8)
	secret := make([]byte, 32)
	if _, err := rand.Read(idb); err != nil {
		return "", tokenRecord{}, err
	}
	if _, err := rand.Read(secret); err != nil {
		return "", tokenRecord{}, err
	}
	id := hex.EncodeToString(idb)
	sec := base64.RawURLEncoding.EncodeToString(secret)
	sum := sha256.Sum256([]byte(sec))
	rec := tokenRecord{
		Token: sb.Token{ID: id, Name: req.Name, Role: req.Role, Services: req.Services, Realms: req.Realms, CreatedAt: now.UTC()},
		Hash:  hex.EncodeToString(sum[:]),
	}
	return tokenPrefix + id + "." + sec, rec, nil
}

// principal is who makes a call. A nil *principal is the insecure mode's
// caller, who may do everything.
type principal struct {
	tok sb.Token
	srv *Server
}

// reqInfo is what wrap works out once per request for its handler: who
// calls, and the parsed query string.
type reqInfo struct {
	principal *principal
	query     url.Values
}

type reqInfoKey struct{}

// authenticate resolves the bearer token of r. It returns (nil, nil) in
// insecure mode.
func (s *Server) authenticate(r *http.Request) (*principal, error) {
	if s.cfg.Insecure {
		return nil, nil
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, sb.Errorf(sb.EUnauthenticated, "authorization: a bearer token is required (Authorization: Bearer TOKEN)")
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return nil, sb.Errorf(sb.EUnauthenticated, "authorization: must be \"Bearer TOKEN\"")
	}
	tok = strings.TrimSpace(tok)
	bad := sb.Errorf(sb.EUnauthenticated, "authorization: the token is not valid")
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok {
		return nil, bad
	}
	id, secret, ok := strings.Cut(rest, ".")
	if !ok {
		return nil, bad
	}
	var rec tokenRecord
	found, err := s.found(r.Context(), func() bool {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		var ok bool
		rec, ok = s.st.tokens[id]
		return ok
	})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret))
	want, err := hex.DecodeString(rec.Hash)
	if err != nil || len(want) != len(sum) {
		want = make([]byte, len(sum))
	}
	if subtle.ConstantTimeCompare(sum[:], want) != 1 || !found {
		return nil, bad
	}
	return &principal{tok: rec.Token, srv: s}, nil
}

// current returns an error when p's token has been deleted since the
// call was authenticated: a call that lasts (an event stream) asks it
// again as it goes.
func (p *principal) current() error {
	if p == nil {
		return nil
	}
	p.srv.st.mu.RLock()
	_, ok := p.srv.st.tokens[p.tok.ID]
	p.srv.st.mu.RUnlock()
	if !ok {
		return sb.Errorf(sb.EUnauthenticated, "authorization: the token has been deleted")
	}
	return nil
}

func principalFrom(ctx context.Context) *principal {
	if ri, ok := ctx.Value(reqInfoKey{}).(*reqInfo); ok {
		return ri.principal
	}
	return nil
}

// query returns r's query string, parsed once per request.
func query(r *http.Request) url.Values {
	if ri, ok := r.Context().Value(reqInfoKey{}).(*reqInfo); ok {
		return ri.query
	}
	return r.URL.Query()
}

func denied(format string, args ...any) error {
	return sb.Errorf(sb.EPermissionDenied, format, args...)
}

func (p *principal) name() string { return p.tok.Role + " token " + p.tok.Name }

// admin allows admins only.
func (p *principal) admin() error {
	if p == nil || p.tok.Role == sb.RoleAdmin {
		return nil
	}
	return denied("%s may not do this: it needs an admin token", p.name())
}

// readAll allows admins and readers.
func (p *principal) readAll() error {
	if p == nil || p.tok.Role == sb.RoleAdmin || p.tok.Role == sb.RoleReader {
		return nil
	}
	return denied("%s may not list everything: it needs a reader or admin token", p.name())
}

// own allows what a service does to its own instances and config.
func (p *principal) own(realm, service string) error {
	if p == nil || p.tok.Role == sb.RoleAdmin {
		return nil
	}
	if p.tok.Role == sb.RoleService && slices.Contains(p.tok.Services, service) && slices.Contains(p.tok.Realms, realm) {
		return nil
	}
	return denied("%s may not act for service %s in realm %s%s", p.name(), service, realm, p.binding())
}

// services names the services a token acts for, for messages.
func (p *principal) services() string {
	switch len(p.tok.Services) {
	case 0:
		return "its services"
	case 1:
		return "service " + p.tok.Services[0]
	}
	return "services " + strings.Join(p.tok.Services, ", ")
}

// binding says what a service token is bound to, for a refusal: a token
// made for another realm (a forgotten --realm, a sidecar.yaml's realm)
// reads otherwise as a missing policy.
func (p *principal) binding() string {
	if p.tok.Role != sb.RoleService {
		return ""
	}
	return fmt.Sprintf(": it acts for %s in %s only", strings.Join(p.tok.Services, ", "), strings.Join(p.tok.Realms, ", "))
}

// readConfig allows reading the merged config of service in realm.
func (p *principal) readConfig(realm, service string) error {
	if p.readAll() == nil {
		return nil
	}
	return p.own(realm, service)
}

// readService allows reading and watching the instances of service in
// realm: its own, or one it may call by policy.
func (p *principal) readService(realm, service string) error {
	if p.readAll() == nil || p.own(realm, service) == nil {
		return nil
	}
	if p.tok.Role == sb.RoleService && slices.Contains(p.tok.Realms, realm) {
		p.srv.st.mu.RLock()
		defer p.srv.st.mu.RUnlock()
		for _, own := range p.tok.Services {
			if slices.Contains(p.srv.st.policies[realm+"/"+own], service) {
				return nil
			}
		}
	}
	if p.tok.Role == sb.RoleService && !slices.Contains(p.tok.Realms, realm) {
		return denied("%s may not read service %s in realm %s%s", p.name(), service, realm, p.binding())
	}
	// The token's services name the caller: a sidecar that only routes
	// has no service of its own to name in its 403.
	return denied("%s may not read service %s in realm %s: no policy lets %s call it", p.name(), service, realm, p.services())
}

// createToken stores a new token and returns it with its secret, once.
func (s *Server) createToken(ctx context.Context, req sb.TokenRequest) (*sb.Token, error) {
	tok, rec, err := newToken(req, s.cfg.Now())
	if err != nil {
		return nil, err
	}
	val, _ := jsonMarshal(rec)
	if _, err := s.txn(ctx, Op{Key: pfxToken + rec.ID, Value: val, IfIndex: IfIndex(0)}); err != nil {
		return nil, err
	}
	out := rec.Token
	out.Secret = tok
	return &out, nil
}

func (s *Server) tokensLocked() []sb.Token {
	out := []sb.Token{}
	for _, t := range s.st.tokens {
		out = append(out, t.Token)
	}
	slices.SortFunc(out, func(a, b sb.Token) int { return a.CreatedAt.Compare(b.CreatedAt)*2 + strings.Compare(a.ID, b.ID) })
	return out
}

func (s *Server) deleteToken(ctx context.Context, id string) error {
	ok, err := s.found(ctx, func() bool {
		s.st.mu.RLock()
		defer s.st.mu.RUnlock()
		_, ok := s.st.tokens[id]
		_, damaged := s.st.damaged[pfxToken+id] // in no answer, but deleted on demand
		return ok || damaged
	})
	if err != nil {
		return err
	}
	if !ok {
		return sb.Errorf(sb.ENotFound, "token %s: not found", id)
	}
	_, err = s.txn(ctx, Op{Key: pfxToken + id, Delete: true})
	return err
}

// putPolicy replaces the policy of a service in a realm.
func (s *Server) putPolicy(ctx context.Context, p sb.Policy) (*sb.Policy, error) {
	if p.MayCall == nil {
		p.MayCall = []string{}
	}
	val, _ := jsonMarshal(p.MayCall)
	index, err := s.txn(ctx, Op{Key: pfxPolicy + p.Realm + "/" + p.Service, Value: val})
	if err != nil {
		return nil, err
	}
	p.Index = index
	return &p, nil
}

func (s *Server) policiesLocked(realm string) []sb.Policy {
	out := []sb.Policy{}
	for k, calls := range s.st.policies {
		r, svc, _ := strings.Cut(k, "/")
		if realm != "" && r != realm {
			continue
		}
		out = append(out, sb.Policy{Service: svc, Realm: r, MayCall: calls})
	}
	slices.SortFunc(out, func(a, b sb.Policy) int { return strings.Compare(a.Realm+"/"+a.Service, b.Realm+"/"+b.Service) })
	return out
}
