// Package remediate is the remediator's core: loop, mode, pause, rails, audit, state file and actuators. A Policy
// (remediate/failover, mtu, keepalive) observes signals and returns Plans: decisions with the kernel Changes they want;
// it reads the kernel through Env and never writes it. The core guarantees: off and dry-run write nothing but the hand-back
// of a change of ours nothing maintains any more; pause and the rails (backoff, damping, rate limit; an escape from a dead
// state waits only for a backoff after its own failure or a lasting conflict) hold every plan before its kernel reads;
// every decision, taken or suppressed, and every conflict leaves an audit line, metric and span once per episode; each
// policy's state-file part is its own object, kept until its changes are undone; each policy runs on its own goroutine
// and lock, so a slow kernel call in one never delays another. Shared routes: one owner per route key (prefix, metric);
// failover's halves win by longest match over any route for the prefix itself (the MTU policy's included), which keeps
// its key and applies again on return. To add a policy: a package implementing Policy, its section and one line in remediate/policies.
package remediate
