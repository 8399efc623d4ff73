package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wgpulse/wgpulse/collector"
	"github.com/wgpulse/wgpulse/collector/statefile"
)

// eventsComponent logs one structured line per connection event (the
// stable `event` key; JSON with --log.format=json, for a SIEM), counts them,
// and records when each device's public key was first seen, in a state
// file that survives restarts.
type eventsComponent struct {
	col    *collector.Collector
	logger *slog.Logger
	count  *prometheus.CounterVec
	keyAge *prometheus.GaugeVec

	mu      sync.Mutex
	path    string
	keys    map[string]keyRecord // by device
	loaded  bool
	saveErr string // last save error logged
}

// keyRecord is one device's key and when it was first seen.
type keyRecord struct {
	PublicKey string    `json:"public_key"`
	FirstSeen time.Time `json:"first_seen"`
}

var eventKinds = []string{collector.EventPeerAdded, collector.EventPeerRemoved, collector.EventHandshakeEstablished,
	collector.EventHandshakeLost, collector.EventHandshakeRegained, collector.EventEndpointChanged,
	collector.EventAllowedIPsChanged, collector.EventDeviceKeyChanged}

func newEventsComponent(a *Agent, cfg Config) *eventsComponent {
	c := &eventsComponent{col: a.collector, logger: a.logger.With("component", "events"), path: cfg.Collector.KeyStatePath(),
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "wgpulse", Name: "events_total",
			Help: "Connection events logged (event: peer_added, peer_removed, handshake_established, handshake_lost, handshake_regained, endpoint_changed, allowed_ips_changed, device_key_changed).",
		}, []string{"event"}),
		keyAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wireguard_device_key_first_seen_seconds",
			Help: "Unix time the agent first saw the device's current public key (kept across restarts in collector.key_state_file).",
		}, []string{"device", "public_key"}),
		keys: map[string]keyRecord{},
	}
	for _, k := range eventKinds {
		c.count.WithLabelValues(k)
	}
	return c
}

func (c *eventsComponent) Run(ctx context.Context) {
	c.load()
	var prev *collector.Snapshot
	for s := range c.col.Subscribe(ctx) {
		for _, e := range collector.Events(prev, s) {
			c.logger.LogAttrs(ctx, slog.LevelInfo, "WireGuard connection event", e.Attrs()...)
			c.count.WithLabelValues(e.Kind).Inc()
		}
		c.observeKeys(s)
		prev = s
	}
}

func (c *eventsComponent) ApplyConfig(_ context.Context, cfg Config) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := cfg.Collector.KeyStatePath(); p != c.path {
		c.path, c.loaded = p, false
	}
	return nil
}

func (c *eventsComponent) Register(r *registrar) {
	r.collectors = append(r.collectors, c.count, c.keyAge)
}

// load reads the key state file once (again after its path changed).
func (c *eventsComponent) load() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loadLocked()
}

func (c *eventsComponent) loadLocked() {
	if c.loaded {
		return
	}
	c.loaded = true
	b, err := os.ReadFile(c.path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var file struct {
		Devices map[string]keyRecord `json:"devices"`
	}
	if err == nil {
		err = json.Unmarshal(b, &file)
	}
	if err != nil {
		c.logger.Warn("cannot read the key state file; key ages start now", "file", c.path, "err", err)
		return
	}
	for dev, rec := range file.Devices {
		if _, ok := c.keys[dev]; !ok {
			c.keys[dev] = rec
		}
	}
}

// observeKeys records a key first seen now, saves the file when a record
// changed, and exports every watched device's key age.
func (c *eventsComponent) observeKeys(s *collector.Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.loadLocked()
	changed := false
	c.keyAge.Reset()
	for _, d := range s.Devices {
		if d.PublicKey == "" {
			continue
		}
		rec, ok := c.keys[d.Name]
		if !ok || rec.PublicKey != d.PublicKey {
			rec = keyRecord{PublicKey: d.PublicKey, FirstSeen: s.Time.UTC()}
			c.keys[d.Name] = rec
			changed = true
		}
		c.keyAge.WithLabelValues(d.Name, d.PublicKey).Set(float64(rec.FirstSeen.Unix()))
	}
	if changed {
		c.saveLocked()
	}
}

// saveLocked writes the file atomically; a failure is logged once per
// distinct error and the ages are kept in memory.
func (c *eventsComponent) saveLocked() {
	b, err := json.MarshalIndent(struct {
		Devices map[string]keyRecord `json:"devices"`
	}{c.keys}, "", "  ")
	if err == nil {
		err = statefile.Write(c.path, b)
	}
	switch {
	case err != nil && err.Error() != c.saveErr:
		c.saveErr = err.Error()
		c.logger.Warn("cannot save the key state file: key ages restart with the agent (set collector.key_state_file, or run with StateDirectory=wgpulse)",
			"file", c.path, "err", err)
	case err == nil:
		c.saveErr = ""
	}
}
