package prober

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wgpulse/wgpulse/deploy/lab/labtest"
)

// rawLoopback opens a raw ICMP socket on lo, closed when the test ends.
func rawLoopback(t *testing.T) *sockConn {
	t.Helper()
	labtest.Require(t) // root: a raw ICMP socket
	conn, err := openSocket("lo", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := conn.(*sockConn)
	if !c.raw {
		t.Fatal("openSocket gave a ping socket to root: want a raw one")
	}
	return c
}

// TestRawSendsRaiseNoWriteEvents: a raw socket's sends leave on its own
// sending socket, so they raise no write-space event on the receiving
// socket, which the runtime watches with epoll for writing as well as
// reading (each one woke a thread), while the replies still arrive on the
// receiving socket and the sending socket queues none of them.
func TestRawSendsRaiseNoWriteEvents(t *testing.T) {
	c := rawLoopback(t)

	// A second epoll set watching the receiving socket as the runtime does.
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ep)
	var recvFD int
	_ = c.rc.Control(func(fd uintptr) { recvFD = int(fd) })
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLET, Fd: int32(recvFD)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, recvFD, &ev); err != nil {
		t.Fatal(err)
	}
	events := make([]unix.EpollEvent, 4)
	if n, _ := unix.EpollWait(ep, events, 0); n != 1 { // the edge of registering a writable socket
		t.Fatalf("epoll reported %d events on registering, want 1", n)
	}

	const probes = 20
	got := make(chan uint16, probes)
	go func() {
		buf := make([]byte, 65536)
		for {
			r, err := c.Recv(buf)
			if err != nil {
				return
			}
			if r.ID == c.EchoID() {
				got <- r.Seq
			}
		}
	}()
	payload := make([]byte, 56)
	for seq := range uint16(probes) {
		if err := c.Send(netip.MustParseAddr("127.0.0.1"), c.EchoID(), seq, payload); err != nil {
			t.Fatal(err)
		}
	}
	for range probes {
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatal("the replies did not reach the receiving socket")
		}
	}
	if n, _ := unix.EpollWait(ep, events, 0); n != 0 {
		t.Errorf("%d sends raised write-space events on the receiving socket (%d reported), want none: each wakes a thread", probes, n)
	}
	if queued, err := unix.IoctlGetInt(c.tx.fd, unix.SIOCINQ); err != nil || queued != 0 {
		t.Errorf("the sending socket holds %d bytes of input (err %v), want 0: its filter drops everything", queued, err)
	}
}

// TestRawSendAndReceiveAllocateNothing: a probe's send and the read of its
// reply on a raw socket allocate nothing (the message, the address, the
// receive batch and both system calls live in the connection): they run
// once per probe.
func TestRawSendAndReceiveAllocateNothing(t *testing.T) {
	conn := rawLoopback(t)
	payload := make([]byte, 56)
	buf := make([]byte, 64<<10)
	dst := netip.MustParseAddr("127.0.0.1")
	var seq uint16
	allocs := testing.AllocsPerRun(100, func() {
		if err := conn.Send(dst, conn.EchoID(), seq, payload); err != nil {
			t.Fatal(err)
		}
		r, err := conn.Recv(buf) // on loopback the reply is queued inside the send
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq != seq {
			t.Fatalf("reply %d to probe %d", r.Seq, seq)
		}
		seq++
	})
	if allocs != 0 {
		t.Errorf("a raw send and the read of its reply allocate %.1f times, want 0", allocs)
	}
}
