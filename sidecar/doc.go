// Package sidecar is the per-host agent: it announces the host's services
// to Atlas and health-checks them (Nerve's role), and routes the host's
// outgoing calls to healthy instances of other services (Synapse and
// HAProxy's role).
package sidecar
