package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Most of a started agent's resident memory is its own program file, not
// its heap: at 1,000 probe targets, 18 MB of a 26 MB RSS were pages of the
// binary (text, rodata, pclntab), of which the steady loop (probes, polls,
// scrapes, the GC's walk of the stacks) uses 7 to 10 MB. The rest were
// touched once, by package initialisation, config parsing and set-up, or
// mapped next to those by the kernel's read-around and fault-around. Clean
// file pages are reclaimed under memory pressure anyway; until then they
// count in the agent's RSS and in its cgroup's memory, and on a small node
// an SRE reads RSS.
//
// So once start is over, the agent advises its read-only mappings of its
// program file MADV_RANDOM (a later fault reads the page it needs, not 128
// KB around it) and MADV_PAGEOUT (the kernel drops the pages now; a page
// another process also maps stays), then drops the file's unmapped pages
// from the page cache (dropProgramCache). What the steady loop uses (probes,
// polls, scrapes, the GC's walk of the stacks) faults back, counted in the
// page cache's folios around the pages it needs: at 1,000 targets with a
// scrape every 5 s, 8 to 12 MB of an installed copy (13 MB without the
// drop), 8 to 9.5 MB of the linker's output.
// --no-runtime.release-startup-pages keeps them.

// startupSettle is how long after Run the start-up pages are released: the
// first poll, the first probe rounds and the remediator's first tick are
// done by then.
const startupSettle = 10 * time.Second

// dropCacheAgain is the wait before the second pass over the page cache.
const dropCacheAgain = time.Second

// releaseStartupPagesAfter waits startupSettle (or ctx) and releases the
// agent's start-up pages, logging what it did.
func releaseStartupPagesAfter(ctx context.Context, logger *slog.Logger) {
	t := time.NewTimer(startupSettle)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	before := residentKB("RssFile")
	n, err := releaseProgramPages()
	after := residentKB("RssFile") // before the loop faults back what it uses
	if err == nil {
		dropProgramCacheTwice(ctx)
	}
	switch {
	case errors.Is(err, unix.EINVAL):
		logger.Info("cannot page out the agent's start-up pages (MADV_PAGEOUT needs Linux 5.4, and memory not locked by mlock); they stay resident", "err", err)
	case err != nil:
		logger.Warn("cannot release the agent's start-up pages; they stay resident", "err", err)
	default:
		logger.Info("released the program pages only start-up used (--no-runtime.release-startup-pages keeps them)",
			"mapped_bytes", n, "file_rss_before_kb", before, "file_rss_after_kb", after)
	}
}

// releaseProgramPages advises every read-only mapping of the running
// program file MADV_RANDOM then MADV_PAGEOUT and returns the bytes those
// mappings span. The program file is its device and inode (a binary
// replaced on disk by an upgrade still matches: its path in maps ends in
// " (deleted)") or its path (on overlayfs, in a container, maps names the
// lower layer's device).
func releaseProgramPages() (int, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/exe", &st); err != nil {
		return 0, fmt.Errorf("stat /proc/self/exe: %w", err)
	}
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m, ok := parseMapsLine(sc.Text())
		if !ok || (m.inode != st.Ino || m.dev != st.Dev) && m.path != exe {
			continue
		}
		advices := []int{unix.MADV_RANDOM, unix.MADV_PAGEOUT}
		if m.writable {
			// The data segment: its pages are the agent's variables (paged
			// out they would need swap); random, so that the first read of
			// one of its pages reads that page, not read_ahead_kb of the
			// file around it (8 MB on this lab's virtual disk).
			advices = advices[:1]
		}
		for _, advice := range advices {
			if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, uintptr(advice)); errno != 0 {
				return n, fmt.Errorf("madvise %x-%x %s: %w", m.start, m.end, adviceName(advice), errno)
			}
		}
		if !m.writable {
			n += int(m.end - m.start)
		}
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("reading /proc/self/maps: %w", err)
	}
	if n == 0 {
		return 0, fmt.Errorf("no read-only mapping of the program file (inode %d) in /proc/self/maps", st.Ino)
	}
	return n, nil
}

// dropProgramCache drops the program file's pages no process maps from the
// page cache (POSIX_FADV_DONTNEED: clean, unmapped pages only, the kernel
// keeps every page a process maps, and every folio one of whose pages it
// maps). A fault maps, with the page it needs, the cached pages around it
// (the kernel's fault-around, which MADV_RANDOM leaves on), and those count
// as resident: with the whole of a copied binary cached the file RSS
// climbed back from 2 to 13 MB in a minute; with the drop it settled at 8.3
// MB in one A/B run and 12.3 in another, as the loop's pages pin their
// folios. Pages just paged out can be dropped only a moment later (a test
// binary: none at once, all but 1.2 of 46 MB after 300 ms), so it passes
// twice, dropCacheAgain apart.
func dropProgramCacheTwice(ctx context.Context) {
	for _, wait := range []time.Duration{0, dropCacheAgain} {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		_ = dropProgramCache() // advice: nothing to undo if refused
	}
}

func dropProgramCache() error {
	f, err := os.Open("/proc/self/exe")
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

func adviceName(advice int) string {
	if advice == unix.MADV_RANDOM {
		return "MADV_RANDOM"
	}
	return "MADV_PAGEOUT"
}

// mapping is one line of /proc/<pid>/maps.
type mapping struct {
	start, end uintptr
	writable   bool
	dev        uint64
	inode      uint64
	path       string // may hold spaces, and end in " (deleted)"
}

// parseMapsLine reads "start-end perms offset major:minor inode [path]".
func parseMapsLine(line string) (mapping, bool) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return mapping{}, false
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	major, minor, ok2 := strings.Cut(f[3], ":")
	maj, err3 := strconv.ParseUint(major, 16, 32)
	mnr, err4 := strconv.ParseUint(minor, 16, 32)
	inode, err5 := strconv.ParseUint(f[4], 10, 64)
	if !ok || !ok2 || errors.Join(err1, err2, err3, err4, err5) != nil || end <= start {
		return mapping{}, false
	}
	path := line
	for range 5 { // the path is what follows the fifth field and its padding
		path = strings.TrimLeft(path, " ")
		path = path[strings.IndexByte(path, ' ')+1:]
	}
	if len(f) == 5 {
		path = ""
	}
	return mapping{start: uintptr(start), end: uintptr(end), writable: strings.Contains(f[1], "w"),
		dev: unix.Mkdev(uint32(maj), uint32(mnr)), inode: inode, path: strings.TrimLeft(path, " ")}, true
}

// residentKB reads one "<field>: <n> kB" line of /proc/self/status; -1
// when it cannot.
func residentKB(field string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return -1
			}
			return kb
		}
	}
	return -1
}
