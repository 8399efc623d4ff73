package lab

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// ProcRSS returns a process's resident set size in MB (pid 0: this process),
// from /proc/PID/status. Benchmarks use it to report memory.
func ProcRSS(pid int) (float64, error) {
	mb, err := ProcStatusMB(pid, "VmRSS")
	if err != nil {
		return 0, err
	}
	return mb[0], nil
}

// ProcStatusMB returns kB fields of /proc/PID/status in MB, in the order
// asked, from one read (pid 0: this process): VmRSS, or its parts RssAnon
// and RssFile.
func ProcStatusMB(pid int, fields ...string) ([]float64, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	mb := make([]float64, len(fields))
	for i, field := range fields {
		found := false
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
				kb, err := strconv.ParseFloat(f[1], 64)
				if err != nil {
					return nil, fmt.Errorf("%s: %s: %w", path, field, err)
				}
				mb[i], found = kb/1024, true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("%s: no %s line", path, field)
		}
	}
	return mb, nil
}

// ProcCPU returns a process's user+system CPU time, from /proc/PID/stat.
func ProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // after the command name
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100, nil // USER_HZ
}
