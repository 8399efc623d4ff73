// Package agent composes the wgpulse agent from its packages: the config
// file, the registry, the HTTP endpoints and the reload loop. cmd/wgpulse
// only parses flags and calls into it.
package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/wgpulse/wgpulse/alerts"
	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/prober"
	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
	"github.com/wgpulse/wgpulse/remediate/policies"
)

// Config is the whole configuration file. Every section is optional.
type Config struct {
	Collector collector.Config `yaml:"collector"`
	Prober    prober.Config    `yaml:"prober"`
	// Alerts and SLO only shape the generated rules and dashboards
	// (`wgpulse generate`); the agent itself does not evaluate them.
	Alerts alerts.Config    `yaml:"alerts"`
	SLO    alerts.SLOConfig `yaml:"slo"`
	// Remediate is the remediator: failover between tunnels.
	Remediate policies.Config `yaml:"remediate"`
}

// DefaultConfig is what the agent runs with when there is no config file.
func DefaultConfig() Config {
	return Config{Collector: collector.DefaultConfig(), Prober: prober.DefaultConfig(), Alerts: alerts.DefaultConfig(),
		SLO: alerts.DefaultSLOConfig(), Remediate: policies.DefaultConfig()}
}

// section is a validated part of the file, at a YAML key.
type section struct {
	key      string
	validate func() error
}

func (c *Config) sections() []section {
	return []section{
		{"collector", c.Collector.Validate},
		{"prober", c.Prober.Validate},
		{"alerts", c.Alerts.Validate},
		{"slo", c.SLO.Validate},
		{"remediate", c.Remediate.Validate},
		{"remediate", c.crossCheck},
		{"slo", c.bucketCheck("slo")},
		{"alerts", c.bucketCheck("alerts")},
	}
}

// bucketCheck: the latency thresholds of the generated rules in section
// must be classic buckets of the prober's RTT histogram.
func (c *Config) bucketCheck(section string) func() error {
	return func() error {
		var errs []error
		for _, e := range alerts.CheckRTTBuckets(c.Alerts, c.SLO, c.Prober.RTTBuckets) {
			if rel, ok := strings.CutPrefix(e.Path, section+"."); ok {
				errs = append(errs, &crossError{rel, e.Problem()})
			}
		}
		return errors.Join(errs...)
	}
}

// crossCheck finds what no one section can: the remediator's devices must be
// watched and its paths probed.
func (c *Config) crossCheck() error {
	var errs []error
	if c.Remediate.Mode == remediate.ModeOff {
		return nil
	}
	if len(c.Remediate.Failover) > 0 && !c.Prober.Enabled {
		errs = append(errs, &crossError{"failover", "needs the prober: set prober.enabled: true (or remediate.mode: off)"})
	}
	if watched := c.Collector.Devices; len(watched) > 0 {
		for i, g := range c.Remediate.Failover {
			for _, side := range []struct {
				name string
				p    failover.Path
			}{{"primary", g.Primary}, {"backup", g.Backup}} {
				if side.p.Device != "" && !slices.Contains(watched, side.p.Device) {
					errs = append(errs, &crossError{fmt.Sprintf("failover[%d].%s.device", i, side.name),
						fmt.Sprintf("%q is not in collector.devices %v: add it there so its handshakes are read", side.p.Device, watched)})
				}
			}
		}
	}
	return errors.Join(errs...)
}

// crossError is a problem between sections, at a path in one of them.
type crossError struct{ path, problem string }

func (e *crossError) Error() string        { return e.path + ": " + e.problem }
func (e *crossError) FieldPath() string    { return e.path }
func (e *crossError) FieldProblem() string { return e.problem }

// applyModeFlag applies --remediate.mode over the file's remediate.mode.
func applyModeFlag(cfg *Config, mode string) error {
	if mode == "" {
		return nil
	}
	switch m := remediate.Mode(mode); m {
	case remediate.ModeOff, remediate.ModeDryRun, remediate.ModeAuto:
		cfg.Remediate.Mode = m
		return nil
	}
	return fmt.Errorf("--remediate.mode: must be off, dry-run or auto, got %q", mode)
}

// LoadFile reads and validates a config file. An empty path means defaults.
func LoadFile(path string) (Config, error) {
	if path == "" {
		return DefaultConfig(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading config file: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes YAML over the defaults, rejecting unknown keys, then
// validates every section. Errors read "FILE:LINE: section.field: problem".
func Parse(data []byte, filename string) (Config, error) {
	cfg := DefaultConfig()
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return Config{}, yamlError(nil, filename, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, yamlError(&root, filename, err)
	}
	var errs []error
	for _, s := range cfg.sections() {
		err := s.validate()
		if err == nil {
			continue
		}
		for _, e := range unjoin(err) {
			errs = append(errs, located(&root, filename, s.key, e))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// fieldProblem is how a section's Validate says which field is wrong: a
// YAML path relative to the section ("devices[1]", "failover[0].primary.device").
type fieldProblem interface {
	FieldPath() string
	FieldProblem() string
}

// located renders a section's error as "FILE:LINE: section.path: problem",
// with the line of the deepest part of the path found in the file.
func located(root *yaml.Node, filename, section string, err error) error {
	var fp fieldProblem
	if !errors.As(err, &fp) {
		return fmt.Errorf("%s: %s: %w", filename, section, err)
	}
	path := section + "." + fp.FieldPath()
	loc := filename
	if line := lineOf(root, path); line > 0 {
		loc = fmt.Sprintf("%s:%d", filename, line)
	}
	return fmt.Errorf("%s: %s: %s", loc, path, fp.FieldProblem())
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

var (
	yamlLine     = regexp.MustCompile(`^line (\d+): (.*)$`)
	unknownField = regexp.MustCompile(`^field (\S+) not found in type (\S+)$`)
)

// yamlError rewrites yaml.v3 errors as "FILE:LINE: problem", one per line;
// an unknown key is named by its YAML path ("slo.perod"), found in root.
func yamlError(root *yaml.Node, filename string, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			return fmt.Errorf("%s:%s: %s", filename, m[1], m[2])
		}
		return fmt.Errorf("%s: %s", filename, msg)
	}
	var errs []error
	for _, e := range te.Errors {
		m := yamlLine.FindStringSubmatch(e)
		if m == nil {
			errs = append(errs, fmt.Errorf("%s: %s", filename, e))
			continue
		}
		msg := m[2]
		if u := unknownField.FindStringSubmatch(msg); u != nil {
			line, _ := strconv.Atoi(m[1])
			path := keyPath(root, line, u[1])
			if path == "" {
				path = u[1]
			}
			msg = fmt.Sprintf("unknown field %s; check the spelling against the README's config reference", path)
		}
		errs = append(errs, fmt.Errorf("%s:%s: %s", filename, m[1], msg))
	}
	return errors.Join(errs...)
}

// lineOf finds the line of a dotted path such as "collector.devices[1]" or
// "collector.peer_names"; it returns the deepest line found, 0 for none.
func lineOf(root *yaml.Node, path string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(path, ".") {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 && strings.HasSuffix(part, "]") {
			name = part[:i]
			if v, err := strconv.Atoi(part[i+1 : len(part)-1]); err == nil {
				idx = v
			}
		}
		next := mapValue(n, name)
		if next == nil {
			return line
		}
		line = next.Line
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

// keyPath returns the dotted YAML path ("slo.perod", "prober.targets[0].adress")
// of the mapping key named key on line, or "" when there is none.
func keyPath(root *yaml.Node, line int, key string) string {
	var walk func(n *yaml.Node, path string) string
	walk = func(n *yaml.Node, path string) string {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				if p := walk(c, path); p != "" {
					return p
				}
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if k.Line == line && k.Value == key {
					return p
				}
				if found := walk(v, p); found != "" {
					return found
				}
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				if p := walk(c, fmt.Sprintf("%s[%d]", path, i)); p != "" {
					return p
				}
			}
		}
		return ""
	}
	if root == nil {
		return ""
	}
	return walk(root, "")
}

func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			// Point at the key's line; for block values that is where the
			// user looks.
			v := n.Content[i+1]
			if v.Kind == yaml.ScalarNode {
				return v
			}
			c := *v
			c.Line = n.Content[i].Line
			return &c
		}
	}
	return nil
}
