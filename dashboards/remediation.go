package dashboards

//lint:file-ignore SA1019 the v1 dashboard schema is deliberate: it is the JSON Grafana imports, and the SDK version the project pins (v0.0.22) documents it

import (
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/table"

	"github.com/wgpulse/wgpulse/alerts"
)

// remediation is what the remediator did and why: actions and suppressions
// over time, the active path and health of every failover group, MTU and
// keepalive changes with their reasons, and the outages that led to them.
func remediation(alerts.SLOConfig) *dashboard.DashboardBuilder {
	b := variables(base("WireGuard remediation", "wgpulse-remediation", "What the remediator did and why: failover, MTU and keepalive.", "remediation"), false)
	b = b.WithVariable(dashboard.NewQueryVariableBuilder("group").Label("Group").
		Query(dashboard.StringOrMap{String: ptr(fmt.Sprintf("label_values(wgpulse_remediation_policy_info{%s}, group)", nodeSel))}).Datasource(datasource()).
		Refresh(dashboard.VariableRefreshOnTimeRangeChanged).Sort(dashboard.VariableSortAlphabeticalAsc).
		Multi(true).IncludeAll(true).AllValue(".*"))
	sel := nodeSel + `, group=~"$group"`
	decisions := table.NewPanelBuilder().Title("Last decision per group and peer").
		Description("The last audited decision of each policy for each failover group or peer: action, result (ok, error, dry_run, suppressed) and its reason. The full history is in the agents' audit log (msg=\"remediation decision\").").
		Unit("dateTimeAsIso").Datasource(datasource()).Span(24).Height(8).
		WithTarget(query(fmt.Sprintf("max by (instance, policy, group, peer, action, result, reason) (wgpulse_remediation_last_decision_timestamp_seconds{%s}) * 1000", sel), "").
			Format(prometheus.PromQueryFormatTable).Instant()).
		WithTransformation(dashboard.DataTransformerConfig{Id: "organize", Options: map[string]any{"excludeByName": map[string]any{"Time": true}, "renameByName": map[string]any{"Value": "at"}}}).
		SortBy([]cog.Builder[common.TableSortByFieldState]{common.NewTableSortByFieldStateBuilder().DisplayName("at").Desc(true)}).
		Footer(common.NewTableFooterOptionsBuilder().Show(false).Reducer([]string{"max"}))
	return b.
		WithRow(dashboard.NewRowBuilder("Now")).
		WithPanel(statPanel("Groups on the backup", "Failover groups whose traffic is on the backup path now.", "short",
			fmt.Sprintf(`count(wgpulse_failover_active_path{%s, path="backup"} == 1) or vector(0)`, sel))).
		WithPanel(statPanel("Paused agents", "Agents whose remediation is paused (POST /-/remediate/resume or SIGUSR1 resumes it).", "short",
			fmt.Sprintf("sum(wgpulse_remediation_paused{%s}) or vector(0)", nodeSel))).
		WithPanel(statPanel("Failed actions (1h)", "Remediation actions the kernel or WireGuard refused in the last hour.", "short",
			fmt.Sprintf(`sum(increase(wgpulse_remediation_actions_total{%s, result="error"}[1h])) or vector(0)`, sel))).
		WithPanel(statPanel("Conflicts (1h)", "Times another manager deleted or overrode a change of wgpulse in the last hour.", "short",
			fmt.Sprintf("sum(increase(wgpulse_remediation_conflicts_total{%s}[1h])) or vector(0)", sel))).
		WithPanel(decisions).
		WithRow(dashboard.NewRowBuilder("Failover")).
		WithPanel(ts("Active path", "1 while a group's traffic is on its backup path, 0 on its primary (in dry-run: where auto would have put it).", "short",
			query(fmt.Sprintf(`wgpulse_failover_active_path{%s, path="backup"}`, sel), "{{instance}} {{group}} on backup"))).
		WithPanel(ts("Path health", "1 while a path is up, 0 while down or unknown: the primary's and backup's probe verdicts.", "short",
			query(fmt.Sprintf("wgpulse_failover_path_healthy{%s}", sel), "{{instance}} {{group}} {{path}}"))).
		WithPanel(ts("Outages: paths down", "1 while a path is down by its rule (losses in a row, loss ratio, RTT, stale handshake); what led to each failover.", "short",
			query(fmt.Sprintf(`wgpulse_failover_path_state{%s, state="down"}`, sel), "{{instance}} {{group}} {{path}} down"))).
		WithPanel(ts("Actions", "Remediation actions per interval by policy, group, action and result.", "short",
			query(fmt.Sprintf("sum by (instance, policy, group, action, result) (increase(wgpulse_remediation_actions_total{%s}[$__rate_interval]))", sel), "{{instance}} {{policy}} {{group}} {{action}} {{result}}"))).
		WithPanel(ts("Suppressions", "Actions wanted and not taken, by reason (hold_down, both_down, damped, rate_limited, paused...), once per episode.", "short",
			query(fmt.Sprintf("sum by (instance, policy, group, reason) (increase(wgpulse_remediation_suppressed_total{%s}[$__rate_interval]))", sel), "{{instance}} {{policy}} {{group}} {{reason}}"))).
		WithPanel(ts("Damping and flaps", "Each group's flap damping penalty (suppress at 2000 by default) and switches that left a path within hold_down of arriving.", "short",
			query(fmt.Sprintf("wgpulse_failover_damping_penalty{%s}", sel), "penalty {{instance}} {{group}}"),
			query(fmt.Sprintf("increase(wgpulse_failover_flaps_total{%s}[$__rate_interval])", sel), "flaps {{instance}} {{group}}"))).
		WithRow(dashboard.NewRowBuilder("MTU and keepalive")).
		WithPanel(ts("MTU in force vs path MTU", "The MTU the MTU policy put in force for a peer (route or device), against the path MTU the prober measured.", "bytes",
			query(fmt.Sprintf("wgpulse_remediation_mtu_bytes{%s}", peerSel), "set {{instance}} {{name}} {{mechanism}}"),
			query(fmt.Sprintf("wgpulse_path_mtu_bytes{%s}", peerSel), "path {{instance}} {{name}} {{target}}"))).
		WithPanel(ts("Keepalive and NAT lifetime", "The PersistentKeepalive the keepalive policy set for a peer, against the NAT mapping lifetime it estimated from idle gaps.", "s",
			query(fmt.Sprintf("wgpulse_remediation_keepalive_seconds{%s}", peerSel), "keepalive {{instance}} {{name}}"),
			query(fmt.Sprintf("wgpulse_keepalive_nat_timeout_estimate_seconds{%s}", peerSel), "NAT lifetime {{instance}} {{name}}"))).
		WithPanel(ts("NATs this side cannot fix", "1 while a peer's NAT keeps expiring with a keepalive set on this side: the peer behind the NAT must set PersistentKeepalive.", "short",
			query(fmt.Sprintf("wgpulse_keepalive_nat_unfixable{%s}", peerSel), "{{instance}} {{name}}")))
}
