package collector

import (
	"bytes"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// wg-quick files hold private and preshared keys. Whatever a file holds,
// parsing it never crashes, keeps only valid public keys with one-line
// names, and no secret of it ever reaches the names or the error.
func FuzzParsePeerFile(f *testing.F) {
	const pub, priv = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0cz0="
	f.Add([]byte("[Interface]\nPrivateKey = " + priv + "\n\n[Peer]\n# Name = aws-eu\nPublicKey = " + pub + "\nPresharedKey = " + priv + "\nEndpoint = 198.51.100.1:51820\n"))
	f.Add([]byte("[Peer]\nPublicKey = " + pub + "\n# name=dc1\n[peer]\nPublicKey = not-a-key\n"))
	f.Add([]byte("[Peer]\r\n#Name=x\r\nPublicKey=" + pub + "\r\n"))
	f.Add([]byte("[Peer]\nPublicKey = " + priv + "\n# Name = leaks?\n"))
	f.Add([]byte("[Peer]\nEndpoint = hub.example.net:51820\nPublicKey = " + pub + "\n[Peer]\nPublicKey = " + pub + "\nEndpoint = [2001:db8::1]:51820\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pf := PeerFiles{Names: map[string]string{}, Hosts: map[string]string{}}
		err := parsePeerFile(bytes.NewReader(b), pf)
		secrets := secretsOf(string(b))
		for k, h := range pf.Hosts {
			if _, perr := wgtypes.ParseKey(k); perr != nil {
				t.Fatalf("kept a host for %q, not a WireGuard key", k)
			}
			if _, ok := EndpointHost(h); !ok || strings.ContainsAny(h, "\r\n") {
				t.Fatalf("host %q is not a host:port", h)
			}
			for _, s := range secrets {
				if strings.Contains(h, s) {
					t.Fatalf("a private or preshared key reached a host: %q", h)
				}
			}
		}
		for k, v := range pf.Names {
			if _, perr := wgtypes.ParseKey(k); perr != nil {
				t.Fatalf("kept %q, not a WireGuard key", k)
			}
			if strings.ContainsAny(v, "\r\n") {
				t.Fatalf("name %q spans lines", v)
			}
			for _, s := range secrets {
				if v == s || strings.Contains(v, s) {
					t.Fatalf("a private or preshared key reached a name: %q", v)
				}
			}
		}
		if err != nil {
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("a secret reached the error: %v", err)
				}
			}
		}
	})
}

// secretsOf are the values of PrivateKey and PresharedKey lines.
func secretsOf(file string) []string {
	var out []string
	for _, line := range strings.Split(file, "\n") {
		k, v, ok := strings.Cut(line, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if v = strings.TrimSpace(v); ok && len(v) >= 8 && (k == "privatekey" || k == "presharedkey") {
			out = append(out, v)
		}
	}
	return out
}
