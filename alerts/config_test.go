package alerts_test

import (
	"strings"
	"testing"

	"github.com/wgpulse/wgpulse/alerts"
)

// Several bad fields are reported in the section's order, the same on every
// run (not map iteration order).
func TestValidateErrorsInStableOrder(t *testing.T) {
	cfg := alerts.DefaultConfig()
	cfg.HandshakeFor, cfg.LossFor, cfg.PathMTUFor, cfg.NATUnfixableFor = -1, -1, -1, -1
	cfg.HandshakeGrace, cfg.EndpointWindow = 0, 0
	slo := alerts.DefaultSLOConfig()
	slo.Page.Severity, slo.Ticket.Severity = "loud", "quiet"

	wantOrder := []string{"handshake_for", "loss_for", "path_mtu_for", "nat_unfixable_for", "handshake_grace", "endpoint_window"}
	first := cfg.Validate().Error()
	firstSLO := slo.Validate().Error()
	for _, f := range wantOrder {
		if !strings.Contains(first, f+":") {
			t.Fatalf("Validate() = %q, want an error for %s", first, f)
		}
	}
	for i := 1; i < len(wantOrder); i++ {
		if strings.Index(first, wantOrder[i-1]+":") > strings.Index(first, wantOrder[i]+":") {
			t.Errorf("%s reported before %s:\n%s", wantOrder[i], wantOrder[i-1], first)
		}
	}
	if strings.Index(firstSLO, "page.severity") > strings.Index(firstSLO, "ticket.severity") {
		t.Errorf("ticket reported before page:\n%s", firstSLO)
	}
	for range 50 {
		if got := cfg.Validate().Error(); got != first {
			t.Fatalf("errors changed order between runs:\n%s\nthen\n%s", first, got)
		}
		if got := slo.Validate().Error(); got != firstSLO {
			t.Fatalf("SLO errors changed order between runs:\n%s\nthen\n%s", firstSLO, got)
		}
	}
}
