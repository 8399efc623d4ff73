package alerts

import "fmt"

// The fleet layer: recording rules that pre-aggregate what the fleet
// dashboard shows, one series per tunnel, peer or job, so a fleet of
// thousands of nodes is drawn from a few series each instead of every RTT
// bucket and raw counter. The fleet dashboard queries nothing else (a test
// enforces it); remote_write setups may send only these.

// Labels that identify a tunnel, a peer and a device.
const (
	tunnelLabels = "instance, job, device, public_key, name, target"
	peerLabels   = "instance, job, device, public_key, name"
	deviceLabels = "instance, job, device"
)

// Fleet recording rule names (level:metric:operation).
const (
	FleetLoss         = "wgpulse_tunnel:probe_loss:ratio_rate5m"
	FleetRTTP50       = "wgpulse_tunnel:probe_rtt_seconds:p50_rate5m"
	FleetRTTP99       = "wgpulse_tunnel:probe_rtt_seconds:p99_rate5m"
	FleetJitter       = "wgpulse_tunnel:probe_jitter_seconds:max"
	FleetPathMTU      = "wgpulse_tunnel:path_mtu_bytes:min"
	FleetProbeUp      = "wgpulse_tunnel:probe_up:min"
	FleetHandshakeAge = "wgpulse_peer:handshake_age_seconds:max"
	FleetRx           = "wgpulse_peer:receive_bytes:rate5m"
	FleetTx           = "wgpulse_peer:transmit_bytes:rate5m"
	FleetEndpoint5m   = "wgpulse_peer:endpoint_changes:increase5m"
	FleetEndpointPeer = "wgpulse_peer:endpoint_changes:increase1h"
	FleetDeviceMTU    = "wgpulse_device:mtu_bytes:max"
	FleetPeers        = "wgpulse_job:peers:count"
	FleetStale        = "wgpulse_job:stale_handshakes:count"
	FleetEndpoint1h   = "wgpulse_job:endpoint_changes:increase1h"
)

// FleetRules are the fleet layer's recording rules.
func FleetRules(c Config) RuleFile {
	rate := func(m, by string) string { return fmt.Sprintf("sum by (%s) (rate(%s[5m]))", by, m) }
	quantile := func(q float64) string { return RTTQuantile(q, tunnelLabels, "", "5m") }
	rules := []Rule{
		{Record: FleetLoss, Expr: rate("wgpulse_probe_failures_total", tunnelLabels) + "\n/\n" + rate("wgpulse_probes_total", tunnelLabels)},
		{Record: FleetRTTP50, Expr: quantile(0.5)},
		{Record: FleetRTTP99, Expr: quantile(0.99)},
		{Record: FleetJitter, Expr: fmt.Sprintf("max by (%s) (wgpulse_probe_jitter_seconds)", tunnelLabels)},
		{Record: FleetPathMTU, Expr: fmt.Sprintf("min by (%s) (wgpulse_path_mtu_bytes)", tunnelLabels)},
		{Record: FleetProbeUp, Expr: fmt.Sprintf("min by (%s) (wgpulse_probe_up)", tunnelLabels)},
		{Record: FleetHandshakeAge, Expr: fmt.Sprintf("max by (%s) (time() - wireguard_peer_last_handshake_seconds > 0 and wireguard_peer_last_handshake_seconds > 0)", peerLabels)},
		{Record: FleetRx, Expr: rate("wireguard_peer_receive_bytes_total", peerLabels)},
		{Record: FleetTx, Expr: rate("wireguard_peer_transmit_bytes_total", peerLabels)},
		{Record: FleetEndpoint5m, Expr: fmt.Sprintf("sum by (%s) (increase(wireguard_peer_endpoint_changes_total[5m]))", peerLabels)},
		{Record: FleetEndpointPeer, Expr: fmt.Sprintf("sum by (%s) (increase(wireguard_peer_endpoint_changes_total[1h]))", peerLabels)},
		{Record: FleetDeviceMTU, Expr: fmt.Sprintf("max by (%s) (wireguard_device_mtu_bytes)", deviceLabels)},
		{Record: FleetPeers, Expr: "count by (job) (wireguard_peer_info)"},
		{Record: FleetStale, Expr: fmt.Sprintf("count by (job) (%s > 180)", FleetHandshakeAge)},
		{Record: FleetEndpoint1h, Expr: "sum by (job) (increase(wireguard_peer_endpoint_changes_total[1h]))"},
	}
	// Every 30 s, as the SLI groups: the rules read 5m to 1h windows.
	return RuleFile{Groups: []Group{{Name: "wgpulse-fleet", Interval: "30s", Rules: rules}}}
}

// RTTQuantile is the q-quantile of the probe RTT by the given labels: from
// the native histogram where Prometheus ingests it (fine resolution), else
// from the classic buckets (prober.rtt_buckets).
func RTTQuantile(q float64, by, sel, window string) string {
	return fmt.Sprintf("histogram_quantile(%[1]g, sum by (%[2]s) (rate(wgpulse_probe_rtt_seconds{%[3]s}[%[4]s])))\nor\nhistogram_quantile(%[1]g, sum by (le, %[2]s) (rate(wgpulse_probe_rtt_seconds_bucket{%[3]s}[%[4]s])))", q, by, sel, window)
}
