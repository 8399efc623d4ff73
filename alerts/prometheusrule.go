package alerts

import (
	"bytes"

	"go.yaml.in/yaml/v3"
)

// PrometheusRule renders rule files as one prometheus-operator PrometheusRule
// (monitoring.coreos.com/v1) for deploy/kubernetes: the same groups, in the
// order given, so the cluster evaluates exactly what alerts/ holds.
func PrometheusRule(name string, labels map[string]string, files ...RuleFile) ([]byte, error) {
	type meta struct {
		Name   string            `yaml:"name"`
		Labels map[string]string `yaml:"labels,omitempty"`
	}
	obj := struct {
		APIVersion string   `yaml:"apiVersion"`
		Kind       string   `yaml:"kind"`
		Metadata   meta     `yaml:"metadata"`
		Spec       RuleFile `yaml:"spec"`
	}{APIVersion: "monitoring.coreos.com/v1", Kind: "PrometheusRule", Metadata: meta{name, labels}}
	for _, f := range files {
		obj.Spec.Groups = append(obj.Spec.Groups, f.Groups...)
	}
	var b bytes.Buffer
	b.WriteString(Header)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(obj); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}
