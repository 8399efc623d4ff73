package collector

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// PeerFiles is what wgpulse takes from wg-quick files: peers' friendly
// names and the hostnames of their endpoints, by public key.
type PeerFiles struct {
	Names map[string]string
	// Hosts are `Endpoint = host:port` lines whose host is a name, not an
	// address: what wg-quick resolved once, and remediate.reresolve again.
	Hosts map[string]string
}

// LoadPeerFiles merges friendly names from wg-quick style files matched by
// glob with the explicit map (explicit entries win), and collects endpoint
// hostnames. Only `PublicKey` and `Endpoint` lines and `# Name = x`
// comments inside [Peer] blocks are read: nothing else from the files (in
// particular no PrivateKey or PresharedKey) is kept or logged.
func LoadPeerFiles(explicit map[string]string, glob string) (PeerFiles, error) {
	pf := PeerFiles{Names: make(map[string]string, len(explicit)), Hosts: map[string]string{}}
	if glob != "" {
		files, err := filepath.Glob(glob)
		if err != nil {
			return PeerFiles{}, fmt.Errorf("peer_names_files %q: %w", glob, err)
		}
		for _, f := range files {
			if err := readPeerFile(f, pf); err != nil {
				return PeerFiles{}, err
			}
		}
	}
	for k, v := range explicit {
		pf.Names[k] = v
	}
	return pf, nil
}

func readPeerFile(path string, into PeerFiles) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("peer_names_files: %w", err)
	}
	defer f.Close()
	if err := parsePeerFile(f, into); err != nil {
		return fmt.Errorf("peer_names_files: %s: %w", path, err)
	}
	return nil
}

// EndpointHost says whether a wg-quick Endpoint value names a host (not an
// address) with a valid port, and returns it as host:port.
func EndpointHost(v string) (string, bool) {
	if _, err := netip.ParseAddrPort(v); err == nil {
		return "", false
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil || host == "" || strings.ContainsAny(host, " \t/%") {
		return "", false
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return "", false
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", false
	}
	return net.JoinHostPort(host, port), true
}

// parsePeerFile reads one wg-quick file. A name or endpoint may come
// before or after the PublicKey line of its block.
func parsePeerFile(r io.Reader, into PeerFiles) error {
	var (
		inPeer          bool
		key, name, host string
		lineNo          int
	)
	flush := func() {
		if inPeer && key != "" && name != "" {
			into.Names[key] = name
		}
		if inPeer && key != "" && host != "" {
			into.Hosts[key] = host
		}
		key, name, host = "", "", ""
	}
	s := bufio.NewScanner(r)
	for s.Scan() {
		lineNo++
		line := strings.TrimSpace(s.Text())
		if strings.HasPrefix(line, "[") {
			flush()
			inPeer = strings.EqualFold(line, "[Peer]")
			continue
		}
		if !inPeer {
			continue
		}
		if c, ok := strings.CutPrefix(line, "#"); ok {
			if k, v, ok := strings.Cut(c, "="); ok && strings.EqualFold(strings.TrimSpace(k), "name") {
				name = strings.TrimSpace(v)
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if strings.EqualFold(k, "Endpoint") {
			if h, ok := EndpointHost(v); ok {
				host = h
			}
			continue
		}
		if !strings.EqualFold(k, "PublicKey") {
			continue
		}
		if _, err := wgtypes.ParseKey(v); err != nil {
			return fmt.Errorf("line %d: PublicKey is not a base64 WireGuard key", lineNo)
		}
		key = v
	}
	flush()
	return s.Err()
}
