package remediate

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// Mode is what the remediator may do.
type Mode string

const (
	// ModeOff: no probing of the policies' targets, no decisions, nothing touched.
	ModeOff Mode = "off"
	// ModeDryRun: every decision is made, logged and counted exactly as in
	// auto, and nothing is touched.
	ModeDryRun Mode = "dry-run"
	// ModeAuto: decisions are carried out.
	ModeAuto Mode = "auto"
)

// Config is the core's part of the `remediate:` section; each policy's
// part is its own (remediate/policies composes them).
type Config struct {
	Mode Mode `yaml:"mode"`
	// StateFile keeps what the policies must not forget (active paths,
	// damping penalties, owned routes, original values) across restarts;
	// written atomically.
	StateFile string `yaml:"state_file"`
	// RestoreOnExit undoes every change on a clean exit (SIGTERM, Ctrl-C).
	RestoreOnExit bool `yaml:"restore_on_exit"`
	// RouteProtocol marks the routes the remediator owns (`ip route show
	// proto 117`); no route with another protocol is ever changed.
	RouteProtocol int `yaml:"route_protocol"`
	// Budget caps the changes of all policies together: the last rail when
	// something makes every unit want to act (a loop, a broken probe plane).
	Budget Budget `yaml:"budget"`
}

// Budget is a node-wide bucket of Changes refilled evenly over Per. A
// quarter of it is kept for escapes from dead paths: they go first.
type Budget struct {
	Changes int           `yaml:"changes"`
	Per     time.Duration `yaml:"per"`
}

// DefaultRouteProtocol is wgpulse's route protocol number: unassigned in
// iproute2's rt_protos and in use by no common routing daemon.
const DefaultRouteProtocol = 117

// DefaultConfig is the core's defaults: dry-run.
func DefaultConfig() Config {
	return Config{Mode: ModeDryRun, StateFile: "/var/lib/wgpulse/remediate.json", RouteProtocol: DefaultRouteProtocol,
		Budget: Budget{Changes: 50, Per: 10 * time.Minute}}
}

// Validate names the offending field.
func (c Config) Validate() error {
	var errs []error
	fe := Fields(&errs)
	switch c.Mode {
	case ModeOff, ModeDryRun, ModeAuto:
	default:
		fe("mode", `must be "off", "dry-run" or "auto", got %q`, c.Mode)
	}
	if c.Mode != ModeOff && !filepath.IsAbs(c.StateFile) {
		fe("state_file", "must be an absolute path (default /var/lib/wgpulse/remediate.json), got %q", c.StateFile)
	}
	if c.RouteProtocol < 5 || c.RouteProtocol > 255 {
		fe("route_protocol", "must be 5..255 (0-4 belong to the kernel), got %d", c.RouteProtocol)
	}
	if c.Budget.Changes < 1 || c.Budget.Changes > 100000 || c.Budget.Per <= 0 {
		fe("budget", "want changes 1..100000 and per > 0 (default 50 per 10m), got %+v", c.Budget)
	}
	return errors.Join(errs...)
}

// FieldFunc reports a problem at a YAML path relative to the `remediate:`
// section ("failover[0].backup.device").
type FieldFunc func(path, format string, a ...any)

// Fields returns a FieldFunc that appends to errs.
func Fields(errs *[]error) FieldFunc {
	return func(path, format string, a ...any) {
		*errs = append(*errs, &FieldError{Path: path, Problem: fmt.Sprintf(format, a...)})
	}
}

// FieldError is a configuration problem at a YAML path relative to the
// section; the agent's config loader maps it to the file's line.
type FieldError struct{ Path, Problem string }

func (e *FieldError) Error() string        { return e.Path + ": " + e.Problem }
func (e *FieldError) FieldPath() string    { return e.Path }
func (e *FieldError) FieldProblem() string { return e.Problem }
