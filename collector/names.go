package collector

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// LoadPeerNames merges friendly names from wg-quick style files matched by
// glob with the explicit map; explicit entries win. Only `PublicKey` lines and
// `# Name = x` comments inside [Peer] blocks are read: nothing else from the
// files (in particular no PrivateKey or PresharedKey) is kept or logged.
func LoadPeerNames(explicit map[string]string, glob string) (map[string]string, error) {
	names := make(map[string]string, len(explicit))
	if glob != "" {
		files, err := filepath.Glob(glob)
		if err != nil {
			return nil, fmt.Errorf("peer_names_files %q: %w", glob, err)
		}
		for _, f := range files {
			if err := readNamesFile(f, names); err != nil {
				return nil, err
			}
		}
	}
	for k, v := range explicit {
		names[k] = v
	}
	return names, nil
}

func readNamesFile(path string, into map[string]string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("peer_names_files: %w", err)
	}
	defer f.Close()
	if err := parseNames(f, into); err != nil {
		return fmt.Errorf("peer_names_files: %s: %w", path, err)
	}
	return nil
}

// parseNames reads one wg-quick file. A name may come before or after the
// PublicKey line of its block.
func parseNames(r io.Reader, into map[string]string) error {
	var (
		inPeer    bool
		key, name string
		lineNo    int
	)
	flush := func() {
		if inPeer && key != "" && name != "" {
			into[key] = name
		}
		key, name = "", ""
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
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "PublicKey") {
			continue
		}
		v = strings.TrimSpace(v)
		if _, err := wgtypes.ParseKey(v); err != nil {
			return fmt.Errorf("line %d: PublicKey is not a base64 WireGuard key", lineNo)
		}
		key = v
	}
	flush()
	return s.Err()
}
