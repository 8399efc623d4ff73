// Package remediate is the remediator's core: the loop, mode, pause, rails, audit, state file and actuators.
// A Policy (remediate/failover, remediate/mtu, remediate/keepalive) observes signals and returns Plans: decisions
// with the kernel Changes they want and what to remember once done; it reads the kernel through Env and never
// writes it. The core guarantees: nothing is written in off or dry-run (dry-run audits exactly what auto would do);
// pause and the unit's rails (backoff, damping, rate limit) are applied to every plan before it runs; every
// decision, taken or suppressed, leaves one audit line, metric and span per episode; each policy's part of the
// state file is its own JSON object, kept until its changes are undone; each policy runs on its own goroutine
// under its own lock, so a slow kernel call in one never delays another's decision. To add a policy, write a
// package implementing Policy (and a config section with Validate and New) and add it to remediate/policies.
package remediate
