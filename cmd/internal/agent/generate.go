package agent

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/wgpulse/wgpulse/alerts"
	"github.com/wgpulse/wgpulse/dashboards"
)

// PrometheusRuleFile is where the generated PrometheusRule lives.
const PrometheusRuleFile = "deploy/kubernetes/prometheusrule.yaml"

// Generated returns every generated file (dashboards JSON, rule YAML, the
// Kubernetes PrometheusRule) for a
// configuration, by path relative to the output directory.
func Generated(cfg Config) (map[string][]byte, error) {
	out := map[string][]byte{}
	ruleFiles := []struct {
		name string
		rf   alerts.RuleFile
	}{
		{"alerts/wgpulse-alerts.yml", alerts.TunnelRules(cfg.Alerts)},
		{"alerts/wgpulse-slo.yml", alerts.SLORules(cfg.Alerts, cfg.SLO)},
		{"alerts/wgpulse-remediation.yml", alerts.RemediationRules(cfg.Alerts)},
		{"alerts/wgpulse-fleet.yml", alerts.FleetRules(cfg.Alerts)},
	}
	var all []alerts.RuleFile
	for _, f := range ruleFiles {
		b, err := f.rf.Marshal()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.name, err)
		}
		out[f.name] = b
		all = append(all, f.rf)
	}
	// The same groups for the prometheus-operator (deploy/kubernetes).
	pr, err := alerts.PrometheusRule("wgpulse", map[string]string{"app.kubernetes.io/name": "wgpulse"}, all...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", PrometheusRuleFile, err)
	}
	out[PrometheusRuleFile] = pr
	ds, err := dashboards.All(cfg.SLO)
	if err != nil {
		return nil, err
	}
	for _, d := range ds {
		b, err := dashboards.Marshal(d.Dashboard)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", d.File, err)
		}
		out[filepath.Join("dashboards", d.File)] = b
	}
	return out, nil
}

// Generate writes the generated files under dir and returns their paths.
func Generate(cfg Config, dir string) ([]string, error) {
	files, err := Generated(cfg)
	if err != nil {
		return nil, err
	}
	var written []string
	for _, name := range slices.Sorted(maps.Keys(files)) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return written, err
		}
		if err := os.WriteFile(p, files[name], 0o644); err != nil {
			return written, err
		}
		written = append(written, p)
	}
	return written, nil
}
