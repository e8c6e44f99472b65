// Package switchboard holds the vocabulary every other package speaks:
// instances, statuses, realms, config layers, tokens and the one error type
// with its table of codes. It does no I/O.
//
// The implementations live in subpackages named after what they do or adapt:
// atlas (the registry server) and its stores, client (the Atlas API client),
// cli (the switchboard command). Only the CLI knows every concrete type.
package switchboard
