package agent

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestParseMapsLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		ok   bool
		want mapping
	}{
		{"00400000-00c5e000 r-xp 00000000 fd:01 1837  /usr/bin/wgpulse", true,
			mapping{start: 0x400000, end: 0xc5e000, dev: unix.Mkdev(0xfd, 1), inode: 1837, path: "/usr/bin/wgpulse"}},
		{"7f00-8f00 r--p 00001000 08:10 42                         /opt/my tools/wgpulse (deleted)", true,
			mapping{start: 0x7f00, end: 0x8f00, dev: unix.Mkdev(8, 0x10), inode: 42, path: "/opt/my tools/wgpulse (deleted)"}},
		{"c000000000-c004000000 rw-p 00000000 00:00 0 ", true,
			mapping{start: 0xc000000000, end: 0xc004000000, writable: true}},
		{"7ffd1000-7ffd3000 rw-p 00000000 00:00 0                          [stack]", true,
			mapping{start: 0x7ffd1000, end: 0x7ffd3000, writable: true, path: "[stack]"}},
		{"", false, mapping{}},
		{"zz-10 r--p 0 00:00 0", false, mapping{}},
		{"20-10 r--p 0 00:00 0", false, mapping{}},
		{"10-20 r--p 0 0000 0", false, mapping{}},
	} {
		got, ok := parseMapsLine(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseMapsLine(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

// programRSSKB sums the resident kB of this process's read-only mappings
// of its own program file, from /proc/self/smaps.
func programRSSKB(t *testing.T) int {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var kb int
	var in bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m, ok := parseMapsLine(line); ok {
			in = !m.writable && m.path == exe
			continue
		}
		if v, ok := strings.CutPrefix(line, "Rss:"); ok && in {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatalf("smaps: %q: %v", line, err)
			}
			kb += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return kb
}

// The test binary's own start-up pages go: what stays resident right after
// is what reading smaps again faults back in.
func TestReleaseProgramPages(t *testing.T) {
	var fs unix.Statfs_t
	if err := unix.Statfs("/proc/self/exe", &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		t.Skip("the test binary is on tmpfs, whose pages cannot be paged out without swap; set GOTMPDIR to a disk")
	}
	before := programRSSKB(t)
	if before < 1024 {
		t.Fatalf("only %d kB of the test binary resident before; the test cannot tell a release", before)
	}
	cachedBefore := pageCacheKB(t, "/proc/self/exe")
	n, err := releaseProgramPages()
	if err != nil {
		t.Fatalf("releaseProgramPages: %v", err)
	}
	dropProgramCacheTwice(t.Context())
	after := programRSSKB(t)
	cachedAfter := pageCacheKB(t, "/proc/self/exe")
	t.Logf("program file resident: %d kB -> %d kB (%d bytes of mappings advised); in the page cache: %d kB -> %d kB",
		before, after, n, cachedBefore, cachedAfter)
	if after > before/2 {
		t.Errorf("program file resident %d kB -> %d kB: not released", before, after)
	}
	// What stays cached is what this process maps (the release's own
	// refaults, the data segment, other threads meanwhile), and the large
	// folios those pages sit in: 1 to 10 MB here. Without the drop all
	// of it stays.
	if cachedAfter > cachedBefore/2 {
		t.Errorf("%d of %d kB of the program file still in the page cache, %d kB resident in this process: its unmapped pages were not dropped",
			cachedAfter, cachedBefore, after)
	}
	if n < before*1024 {
		t.Errorf("advised %d bytes of mappings, less than the %d kB resident in them", n, before)
	}
}

// pageCacheKB is how much of the file at path is in the page cache
// (mincore of a mapping no page of which is touched).
func pageCacheKB(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n * page / 1024
}
