package remediate

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// migrator takes what a version 1 file holds under one key, as the policies do.
type migrator struct{ key string }

func (m migrator) MigrateV1(v1 map[string]json.RawMessage) (json.RawMessage, error) {
	return v1[m.key], nil
}

// Whatever the state file holds, loading it ends in a version 2 state or a
// corrupt (kept aside) or unreadable error, never a crash; a state that
// loads is written and loaded back the same.
func FuzzLoadState(f *testing.F) {
	if b, err := os.ReadFile("policies/testdata/state-v1.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"version":2,"paused":true,"policies":{"failover":{"groups":{}},"mtu":{}}}`))
	f.Add([]byte(`{"version":1,"paused":"yes"}`))
	f.Add([]byte(`{"version":1,"groups":{"g":{"active":"backup"}},"mtu":{"k":1}}`))
	f.Add([]byte(`{"version":9}`))
	f.Add([]byte(`{"version":2,"policies":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "remediate.json")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		policies := []Policy{fakePolicy{name: "failover", migrator: migrator{"groups"}}, fakePolicy{name: "mtu", migrator: migrator{"mtu"}}}
		st, err := loadState(path, policies)
		if err != nil {
			if !errors.Is(err, errCorrupt) {
				t.Fatalf("a readable file gave %v, want a corrupt-file error", err)
			}
			return
		}
		if st.Version != stateVersion || st.Policies == nil {
			t.Fatalf("loaded %+v: want version %d with parts", st, stateVersion)
		}
		if err := saveState(path, st); err != nil {
			t.Fatal(err)
		}
		again, err := loadState(path, policies)
		if err != nil || again.Paused != st.Paused || len(again.Policies) != len(st.Policies) {
			t.Fatalf("written and read back: %+v %v, want %+v", again, err, st)
		}
	})
}

// fakePolicy is only a name and a migrator: loadState needs no more.
type fakePolicy struct {
	Policy // nil: any other call would panic
	name   string
	migrator
}

func (p fakePolicy) Name() string { return p.name }

var _ V1Migrator = fakePolicy{}
