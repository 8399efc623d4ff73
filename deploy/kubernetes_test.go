package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// kubeObjects builds deploy/kubernetes with kustomize (the library kubectl
// -k uses) and decodes every object strictly into its Kubernetes or
// prometheus-operator type: an unknown or misspelled field fails.
func kubeObjects(t *testing.T) map[string]any {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), "kubernetes")
	if err != nil {
		t.Fatalf("kustomize build deploy/kubernetes: %v", err)
	}
	objs := map[string]any{}
	for _, r := range res.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var obj any
		switch r.GetKind() {
		case "Namespace":
			obj = &corev1.Namespace{}
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "Service":
			obj = &corev1.Service{}
		case "DaemonSet":
			obj = &appsv1.DaemonSet{}
		case "PodMonitor":
			obj = &monitoringv1.PodMonitor{}
		case "PrometheusRule":
			obj = &monitoringv1.PrometheusRule{}
		default:
			t.Fatalf("unexpected kind %s in deploy/kubernetes: add it to this test", r.GetKind())
		}
		if err := yaml.UnmarshalStrict(b, obj); err != nil {
			t.Fatalf("%s %s does not decode strictly: %v", r.GetKind(), r.GetName(), err)
		}
		objs[r.GetKind()] = obj
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ConfigMap", "Service", "DaemonSet", "PodMonitor", "PrometheusRule"} {
		if objs[k] == nil {
			t.Errorf("deploy/kubernetes has no %s", k)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return objs
}

// The strict decode itself fails on a misspelled field (so the test above can).
func TestKubernetesStrictDecodeRejectsUnknownFields(t *testing.T) {
	b, err := os.ReadFile("kubernetes/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(b), "hostNetwork: true", "hostNetwrok: true", 1)
	if err := yaml.UnmarshalStrict([]byte(bad), &appsv1.DaemonSet{}); err == nil {
		t.Fatal("a misspelled DaemonSet field decoded without error")
	}
}

func TestKubernetesManifests(t *testing.T) {
	objs := kubeObjects(t)
	ds := objs["DaemonSet"].(*appsv1.DaemonSet)
	pod := ds.Spec.Template.Spec
	if ds.Namespace != "wgpulse" || !pod.HostNetwork || pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("DaemonSet: namespace %q hostNetwork %v dnsPolicy %q; want wgpulse, true, ClusterFirstWithHostNet", ds.Namespace, pod.HostNetwork, pod.DNSPolicy)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("the container has no securityContext.capabilities")
	}
	add := fmt.Sprint(sc.Capabilities.Add)
	if add != "[NET_ADMIN NET_RAW]" || fmt.Sprint(sc.Capabilities.Drop) != "[ALL]" {
		t.Errorf("capabilities add %s drop %v; want exactly NET_ADMIN and NET_RAW on top of drop ALL", add, sc.Capabilities.Drop)
	}
	if sc.Privileged != nil && *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("the container must not be privileged, must not escalate and must have a read-only root")
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["metrics"] != 9586 || !slices.Contains(c.Args, "--web.listen-address=:9586") {
		t.Errorf("ports %v args %v: want port metrics 9586 and the agent listening on it", ports, c.Args)
	}
	for _, p := range []struct {
		probe *corev1.Probe
		path  string
	}{{c.LivenessProbe, "/-/healthy"}, {c.ReadinessProbe, "/-/ready"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("want an HTTP probe of %s on port metrics, got %+v", p.path, p.probe)
		}
	}
	req := c.Resources.Requests
	if req.Cpu().IsZero() || req.Memory().IsZero() || c.Resources.Limits.Memory().Cmp(*req.Memory()) < 0 {
		t.Errorf("resources %+v: want cpu and memory requests, and a memory limit above the request", c.Resources)
	}
	hostPaths := map[string]string{}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
		if v.HostPath != nil {
			hostPaths[v.HostPath.Path] = v.Name
		}
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		if _, ok := volumes[m.Name]; !ok {
			t.Errorf("volumeMount %s has no volume", m.Name)
		}
		mounts[m.MountPath] = m.Name
	}
	for _, p := range []string{"/var/run/wireguard", "/var/lib/wgpulse"} {
		if hostPaths[p] == "" || mounts[p] != hostPaths[p] {
			t.Errorf("the host's %s must be mounted at the same path (volumes %v, mounts %v)", p, hostPaths, mounts)
		}
	}

	// The ConfigMap's config is where --config.file points, and the agent accepts it.
	cm := objs["ConfigMap"].(*corev1.ConfigMap)
	var configArg string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			configArg = v
		}
	}
	cfgVol := volumes[mounts[filepath.Dir(configArg)]]
	if configArg == "" || cfgVol.ConfigMap == nil || cfgVol.ConfigMap.Name != cm.Name || cm.Data[filepath.Base(configArg)] == "" {
		t.Fatalf("--config.file=%q is not a key of ConfigMap %s mounted at its directory", configArg, cm.Name)
	}
	conf := filepath.Join(t.TempDir(), "wgpulse.yml")
	if err := os.WriteFile(conf, []byte(cm.Data[filepath.Base(configArg)]), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := labtest.BuildBinary(t, "./cmd/wgpulse")
	if out, err := exec.Command(bin, "check-config", conf).CombinedOutput(); err != nil {
		t.Errorf("wgpulse check-config rejects the ConfigMap's config: %v\n%s", err, out)
	}
	if !strings.Contains(cm.Data[filepath.Base(configArg)], "/var/lib/wgpulse/") {
		t.Error("the config's remediate.state_file must be on the host's /var/lib/wgpulse mount")
	}

	// Service and PodMonitor select the pods and their metrics port; the
	// PodMonitor's job is "wgpulse", what the generated rules expect.
	sel := ds.Spec.Template.Labels
	svc := objs["Service"].(*corev1.Service)
	pm := objs["PodMonitor"].(*monitoringv1.PodMonitor)
	for k, v := range svc.Spec.Selector {
		if sel[k] != v {
			t.Errorf("Service selector %s=%s does not select the DaemonSet's pods %v", k, v, sel)
		}
	}
	for k, v := range pm.Spec.Selector.MatchLabels {
		if sel[k] != v {
			t.Errorf("PodMonitor selector %s=%s does not select the DaemonSet's pods %v", k, v, sel)
		}
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 || pm.Spec.PodMetricsEndpoints[0].Port == nil || *pm.Spec.PodMetricsEndpoints[0].Port != "metrics" {
		t.Error("the PodMonitor must scrape the port named metrics")
	}
	if sel[pm.Spec.JobLabel] != "wgpulse" {
		t.Errorf("PodMonitor jobLabel %q gives job=%q; the rules expect job=wgpulse", pm.Spec.JobLabel, sel[pm.Spec.JobLabel])
	}
}

// The PrometheusRule holds exactly the groups of the committed alerts/*.yml,
// in the order of the files: a change to the rules without `make generate`
// fails here.
func TestPrometheusRuleMatchesAlerts(t *testing.T) {
	pr := kubeObjects(t)["PrometheusRule"].(*monitoringv1.PrometheusRule)
	var want monitoringv1.PrometheusRuleSpec
	for _, f := range []string{"alerts", "slo", "remediation", "fleet"} {
		b, err := os.ReadFile("../alerts/wgpulse-" + f + ".yml")
		if err != nil {
			t.Fatal(err)
		}
		var spec monitoringv1.PrometheusRuleSpec
		if err := yaml.UnmarshalStrict(b, &spec); err != nil {
			t.Fatalf("alerts/wgpulse-%s.yml: %v", f, err)
		}
		want.Groups = append(want.Groups, spec.Groups...)
	}
	if len(want.Groups) < 4 {
		t.Fatalf("only %d rule groups in alerts/", len(want.Groups))
	}
	if !reflect.DeepEqual(pr.Spec, want) {
		for i := range max(len(pr.Spec.Groups), len(want.Groups)) {
			if i >= len(pr.Spec.Groups) || i >= len(want.Groups) || !reflect.DeepEqual(pr.Spec.Groups[i], want.Groups[i]) {
				t.Fatalf("deploy/kubernetes/prometheusrule.yaml is stale against alerts/ from group %d on: run make generate", i)
			}
		}
	}
}
