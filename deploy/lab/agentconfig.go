package lab

import (
	"fmt"
	"strings"
	"time"
)

// Remediation says how the agents of a lab fail over.
type Remediation struct {
	Mode     string            // off, dry-run or auto ("" = no remediate section)
	Profiles map[string]string // site -> profile (default or fast); sites not named get no group
	// Endpoint: site -> profile of an endpoint-mode group on the site's agent
	// (its primary tunnel over its two uplinks; the site needs DualWAN).
	Endpoint      map[string]string
	HoldDown      time.Duration // 0 = the profile's (30 s)
	StateDir      string        // state files go here as <node>.json
	RestoreOnExit bool
	// GroupYAML is added to every group, e.g. "damping: {...}" (one key per
	// line, unindented).
	GroupYAML string
	// MTU turns the MTU policy on for the node's devices; MTUYAML adds keys
	// to its section (one per line, unindented).
	MTU     bool
	MTUYAML string
	// Keepalive turns the keepalive policy on for the node's devices.
	Keepalive bool
	// ProberYAML is the node's prober section (one key per line, unindented).
	ProberYAML string
	// TCPPorts: site -> port: that site's groups (on the site and on the
	// hub) probe with TCP connects to this port instead of ICMP echoes.
	TCPPorts map[string]int
}

// AgentConfig returns the wgpulse config for the agent on node ("hub" or a
// site): its devices with friendly peer names, and with Remediation.Mode
// set, mirrored failover groups: a site moves the hub LAN to its backup
// tunnel, the hub moves that site's LAN, both probing the far end of each
// tunnel, so traffic between the LANs fails over in both directions. A
// site's group is named "hub", the hub's groups after their sites.
func (l *Lab) AgentConfig(node string, r Remediation) string {
	var devices, names, groups []string
	for _, t := range l.Tunnels {
		switch {
		case node == "hub":
			devices = append(devices, t.HubDevice)
			names = append(names, fmt.Sprintf("    %q: %s", t.PublicKey, t.Name))
		case t.Site == node:
			devices = append(devices, t.Device)
			names = append(names, fmt.Sprintf("    %q: hub-%s", t.HubPublicKey, t.Path))
		}
	}
	for _, s := range l.Sites {
		profile, ok := r.Profiles[s.Name]
		if !ok || (node != "hub" && node != s.Name) {
			continue
		}
		p, _ := l.Tunnel(s.Name + "-primary")
		b, _ := l.Tunnel(s.Name + "-backup")
		name := s.Name // on the hub: the group moving that site's LAN
		if node != "hub" {
			name = "hub" // on a site: the group moving the hub's LAN
		}
		g := fmt.Sprintf("    - name: %s\n      profile: %s\n", name, profile)
		target := func(addr string) string {
			if port := r.TCPPorts[s.Name]; port != 0 {
				return fmt.Sprintf("{address: %s, tcp_port: %d}", addr, port)
			}
			return addr
		}
		if node == "hub" {
			g += fmt.Sprintf("      prefixes: [%s]\n      primary: {device: %s, target: %s}\n      backup: {device: %s, target: %s}\n",
				s.LAN, p.HubDevice, target(p.LocalAddress), b.HubDevice, target(b.LocalAddress))
		} else {
			g += fmt.Sprintf("      prefixes: [%s]\n      primary: {device: %s, target: %s}\n      backup: {device: %s, target: %s}\n",
				l.HubLAN, p.Device, target(p.RemoteAddress), b.Device, target(b.RemoteAddress))
		}
		if r.HoldDown > 0 {
			g += fmt.Sprintf("      hold_down: %s\n", r.HoldDown)
		}
		g += indent(r.GroupYAML, "      ")
		groups = append(groups, g)
	}
	for _, u := range l.Uplinks {
		t, _ := l.Tunnel(u.Tunnel)
		profile, ok := r.Endpoint[t.Site]
		if !ok || node != t.Site {
			continue
		}
		g := fmt.Sprintf("    - name: wan\n      mode: endpoint\n      profile: %s\n      device: %s\n      peer: %q\n      target: %s\n", profile, t.Device, t.HubPublicKey, t.RemoteAddress)
		g += fmt.Sprintf("      primary: {endpoint: %s, underlay_target: %s, underlay_device: %s}\n", t.RelayAddress, t.Underlay, t.SiteInterface)
		g += fmt.Sprintf("      backup: {endpoint: %s, underlay_target: %s, underlay_device: %s}\n", u.RelayAddress, u.Underlay, u.SiteInterface)
		if r.HoldDown > 0 {
			g += fmt.Sprintf("      hold_down: %s\n", r.HoldDown)
		}
		g += indent(r.GroupYAML, "      ")
		groups = append(groups, g)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "collector:\n  devices: [%s]\n  poll_interval: 1s\n  peer_names:\n%s\n", strings.Join(devices, ", "), strings.Join(names, "\n"))
	if r.ProberYAML != "" {
		b.WriteString("prober:\n" + indent(r.ProberYAML, "  "))
	}
	if r.Mode != "" {
		fmt.Fprintf(&b, "remediate:\n  mode: %s\n", r.Mode)
		if r.MTU {
			fmt.Fprintf(&b, "  mtu:\n    enabled: true\n    devices: [%s]\n%s", strings.Join(devices, ", "), indent(r.MTUYAML, "    "))
		}
		if r.Keepalive {
			fmt.Fprintf(&b, "  keepalive:\n    enabled: true\n    devices: [%s]\n", strings.Join(devices, ", "))
		}
		if r.StateDir != "" {
			fmt.Fprintf(&b, "  state_file: %s/%s.json\n", r.StateDir, node)
		}
		if r.RestoreOnExit {
			b.WriteString("  restore_on_exit: true\n")
		}
		if len(groups) > 0 {
			b.WriteString("  failover:\n" + strings.Join(groups, ""))
		}
	}
	return b.String()
}

// indent prefixes every non-empty line of s.
func indent(s, prefix string) string {
	var b strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line != "" {
			b.WriteString(prefix + line + "\n")
		}
	}
	return b.String()
}
