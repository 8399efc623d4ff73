// Package remediate is the remediator's core: loop, mode, pause, rails, audit, state file and actuators. A Policy
// (remediate/failover, mtu, keepalive) observes signals and returns Plans: decisions with the kernel Changes they want;
// it reads the kernel through Env and never writes it. The core guarantees: nothing is written in off or dry-run (dry-run
// audits what auto would do); pause and the unit's rails (backoff, damping, rate limit) hold every plan; every decision,
// taken or suppressed, leaves an audit line, metric and span once per episode; each policy's state-file part is its own
// object, kept until its changes are undone; each policy runs on its own goroutine and lock, so a slow kernel call in one
// never delays another. Shared routes: the core records one owner per route key (prefix, metric) and refuses any other
// policy's change to it; a policy gives way by shape, not by fighting: failover's halves of a prefix win by longest match
// over any route for the prefix itself (the MTU policy's on the primary included), which keeps its key and applies again
// on return. To add a policy: a package implementing Policy, its section and one line in remediate/policies.
package remediate
