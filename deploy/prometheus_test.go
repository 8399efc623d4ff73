package deploy_test

import (
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/config"
	_ "github.com/prometheus/prometheus/discovery/file"       // file_sd_configs
	_ "github.com/prometheus/prometheus/discovery/kubernetes" // Debian's promtool is built without it
	"go.yaml.in/yaml/v3"

	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

func promtool(t *testing.T) string { return labtest.Tool(t, "promtool", "prometheus") }

// The Prometheus configs pass promtool (the Kubernetes one, Prometheus's own
// loader: Debian builds Prometheus without Kubernetes discovery), scrape
// job="wgpulse" as the generated rules expect, and load every generated rule
// file.
func TestPrometheusConfigs(t *testing.T) {
	pt := promtool(t)
	generated, _ := filepath.Glob("../alerts/wgpulse-*.yml")
	for _, f := range []string{"prometheus/prometheus.yml", "prometheus/prometheus-kubernetes.yml", "prometheus/remote-write.yml"} {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := config.LoadFile(f, false, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err != nil {
				t.Fatalf("Prometheus rejects %s: %v", f, err)
			}
			if !strings.Contains(f, "kubernetes") {
				if out, err := exec.Command(pt, "check", "config", f).CombinedOutput(); err != nil {
					t.Fatalf("promtool check config %s: %v\n%s", f, err, out)
				}
			}
			var jobs []string
			for _, sc := range cfg.ScrapeConfigs {
				jobs = append(jobs, sc.JobName)
			}
			if !slices.Contains(jobs, "wgpulse") {
				t.Errorf("%s scrapes jobs %v, want job wgpulse (alerts.job)", f, jobs)
			}
			if len(cfg.RuleFiles) == 0 {
				return // remote-write: rules run centrally
			}
			var loaded []string
			for _, r := range cfg.RuleFiles {
				loaded = append(loaded, filepath.Base(r))
			}
			for _, g := range generated {
				if !slices.Contains(loaded, filepath.Base(g)) {
					t.Errorf("%s does not load the generated %s", f, filepath.Base(g))
				}
			}
		})
	}
	cfg, err := config.LoadFile("prometheus/remote-write.yml", false, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.RemoteWriteConfigs) != 1 || cfg.GlobalConfig.ExternalLabels.Get("cluster") == "" {
		t.Error("the remote_write example must write somewhere and set a cluster external label")
	}
}

// Grafana provisioning files decode strictly into Grafana's provisioning
// schema, and the dashboard provider points where the README puts the
// generated dashboards.
func TestGrafanaProvisioning(t *testing.T) {
	strict := func(path string, into any) {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(into); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	var ds struct {
		APIVersion  int `yaml:"apiVersion"`
		Datasources []struct {
			Name      string         `yaml:"name"`
			UID       string         `yaml:"uid"`
			Type      string         `yaml:"type"`
			Access    string         `yaml:"access"`
			URL       string         `yaml:"url"`
			IsDefault bool           `yaml:"isDefault"`
			Editable  bool           `yaml:"editable"`
			JSONData  map[string]any `yaml:"jsonData"`
		} `yaml:"datasources"`
	}
	strict("grafana/provisioning/datasources/wgpulse.yml", &ds)
	if ds.APIVersion != 1 || len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL == "" {
		t.Errorf("datasource provisioning %+v: want one prometheus data source", ds)
	}
	var dp struct {
		APIVersion int `yaml:"apiVersion"`
		Providers  []struct {
			Name                  string `yaml:"name"`
			OrgID                 int    `yaml:"orgId"`
			Folder                string `yaml:"folder"`
			Type                  string `yaml:"type"`
			DisableDeletion       bool   `yaml:"disableDeletion"`
			AllowUIUpdates        bool   `yaml:"allowUiUpdates"`
			UpdateIntervalSeconds int    `yaml:"updateIntervalSeconds"`
			Options               struct {
				Path                      string `yaml:"path"`
				FoldersFromFilesStructure bool   `yaml:"foldersFromFilesStructure"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	strict("grafana/provisioning/dashboards/wgpulse.yml", &dp)
	if dp.APIVersion != 1 || len(dp.Providers) != 1 || dp.Providers[0].Type != "file" || dp.Providers[0].Options.Path == "" {
		t.Fatalf("dashboard provisioning %+v: want one file provider with a path", dp)
	}
	readme, _ := os.ReadFile("../README.md")
	if !strings.Contains(string(readme), dp.Providers[0].Options.Path) {
		t.Errorf("the README does not say to copy the dashboards to %s", dp.Providers[0].Options.Path)
	}
}
