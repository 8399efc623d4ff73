// Package policies composes the remediator: the `remediate:` section (the
// core's settings and each policy's own) and the policies built from it. It
// is the only package that names every policy; a new policy is a field of
// Config and one line in registry.
package policies

import (
	"context"
	"errors"
	"log/slog"

	"github.com/wgpulse/wgpulse/remediate"
	"github.com/wgpulse/wgpulse/remediate/failover"
	"github.com/wgpulse/wgpulse/remediate/keepalive"
	"github.com/wgpulse/wgpulse/remediate/mss"
	"github.com/wgpulse/wgpulse/remediate/mtu"
	"github.com/wgpulse/wgpulse/remediate/reresolve"
)

// Config is the `remediate:` section.
type Config struct {
	remediate.Config `yaml:",inline"`
	// Failover moves traffic to a backup path while the primary is down.
	Failover failover.Groups `yaml:"failover"`
	// MTU fits inner packets to the measured path MTU.
	MTU mtu.Config `yaml:"mtu"`
	// Keepalive sets PersistentKeepalive below NAT mapping lifetimes.
	Keepalive keepalive.Config `yaml:"keepalive"`
	// Reresolve points peers at their hostname's new address when the
	// handshake goes stale.
	Reresolve reresolve.Config `yaml:"reresolve"`
	// MSS clamps forwarded TCP to the MTU in force through a tunnel.
	MSS mss.Config `yaml:"mss"`
}

// DefaultConfig is the section's defaults: dry-run, no failover group, the
// per-peer policies off.
func DefaultConfig() Config {
	return Config{Config: remediate.DefaultConfig(), MTU: mtu.DefaultConfig(), Keepalive: keepalive.DefaultConfig(), Reresolve: reresolve.DefaultConfig(), MSS: mss.DefaultConfig()}
}

// section is one policy's part of the config: how to check it and what
// runs from it.
type section struct {
	validate func(remediate.FieldFunc)
	policy   func() remediate.Policy
}

// registry is every policy, in the order they start.
func (c Config) registry() []section {
	return []section{
		{c.Failover.Validate, func() remediate.Policy { return failover.New(c.Failover) }},
		{c.MTU.Validate, func() remediate.Policy { return mtu.New(c.MTU) }},
		{c.Keepalive.Validate, func() remediate.Policy { return keepalive.New(c.Keepalive) }},
		{c.Reresolve.Validate, func() remediate.Policy { return reresolve.New(c.Reresolve, nil, c.endpointOwners()) }},
		{c.MSS.Validate, func() remediate.Policy { return mss.New(c.MSS) }},
	}
}

// endpointOwners are the peers whose endpoint an endpoint-mode failover
// group moves (device/public key -> group): reresolve leaves them alone.
func (c Config) endpointOwners() map[string]string {
	out := map[string]string{}
	for _, g := range c.Failover {
		if g.Mode == "endpoint" {
			out[remediate.PeerKey(g.Device, g.Peer)] = g.Name
		}
	}
	return out
}

// Validate names the offending field ("failover[0].backup.device").
func (c Config) Validate() error {
	errs := []error{c.Config.Validate()}
	fe := remediate.Fields(&errs)
	for _, s := range c.registry() {
		s.validate(fe)
	}
	return errors.Join(errs...)
}

func (c Config) policies() []remediate.Policy {
	var out []remediate.Policy
	for _, s := range c.registry() {
		out = append(out, s.policy())
	}
	return out
}

// New validates cfg and returns the remediator running every policy.
func New(cfg Config, logger *slog.Logger, opts remediate.Options) (*remediate.Remediator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Mode != remediate.ModeOff {
		for _, g := range cfg.Failover {
			switch {
			case g.Mode == "endpoint" && opts.Peers == nil:
				return nil, errors.New("remediate: no wgctrl handle: endpoint failover needs CAP_NET_ADMIN (or set remediate.mode: off)")
			case g.Mode != "endpoint" && opts.Routes == nil:
				return nil, errors.New("remediate: no netlink handle: route failover needs CAP_NET_ADMIN (or set remediate.mode: off)")
			}
		}
	}
	return remediate.New(cfg.Config, cfg.policies(), logger, opts)
}

// Apply hands a reloaded configuration to a running remediator.
func Apply(ctx context.Context, r *remediate.Remediator, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	return r.ApplyConfig(ctx, cfg.Config, cfg.policies())
}
