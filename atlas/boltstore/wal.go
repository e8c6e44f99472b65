package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/switchboard-go/switchboard/atlas"
)

// The write-ahead log makes a write durable with one append and one
// fdatasync; bbolt gets the writes later, many at a time, in a checkpoint.
// A bbolt commit rewrites every page on the path to each key it touches and
// syncs twice, so one per batch of writes was most of the cost of a write.
//
// The log is a directory of segments, PATH.wal/SEQ.log, SEQ in 16 hex
// digits. A segment is a series of frames:
//
//	length  uint32, little endian: of the payload in its low 30 bits; the
//	        top bit (frameLater) marks a frame acknowledged before it was
//	        synced, the next (frameSynced) such a frame written when every
//	        frame before it was synced
//	crc     uint32, little endian: CRC-32C of the payload
//	payload the changes of one batch (appendChanges)
//
// A frame is appended and synced before any of its writes is acknowledged,
// so only the last frame of the last segment can be incomplete (a crash
// during its write, which may also leave it reading as zeros from its
// start); Open drops such a frame, whose writes were never acknowledged,
// and refuses a log damaged anywhere else. Frames of writes that may be
// synced later (atlas.Op.SyncLater) are the exception: they are
// acknowledged once written, and synced within SyncDelay, before the next
// frame that is synced at once is written, or before their segment is
// closed (after a failed sync, no segment follows it until its checkpoint
// is done: see Store.syncWaiting). A crash of the machine may leave any of
// them damaged or missing, but only in the last segment, and only after
// the last frame written when every frame before it was synced: one
// synced at once, or one marked frameSynced. Open drops the log from the
// first damaged frame on when no such frame follows it; what it drops then
// is maxUnsynced changes at most, those of one wait for a sync.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const (
	frameHeader = 8
	// frameLater is the length word's bit of a frame acknowledged before
	// it was synced, and frameSynced the bit of such a frame written when
	// every frame before it was synced. Logs written before they existed
	// never set them.
	frameLater  = 1 << 31
	frameSynced = 1 << 30
	frameFlags  = frameLater | frameSynced
	// maxFrame bounds a frame's payload: a larger length is damage, not a
	// batch (a batch is at most 512 writes of at most 1 MiB each: the
	// API's limit on a body), and append refuses one.
	maxFrame = 1<<30 - 1
)

// walDir is the directory of the log of the bbolt file at path.
func walDir(path string) string { return path + ".wal" }

func segmentName(seq uint64) string { return fmt.Sprintf("%016x.log", seq) }

// segments lists the segments in dir, oldest first, with their numbers.
func segments(dir string) ([]string, []uint64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	var (
		paths []string
		seqs  []uint64
	)
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".log")
		if !ok || len(name) != 16 {
			continue
		}
		seq, err := strconv.ParseUint(name, 16, 64)
		if err != nil {
			continue
		}
		paths = append(paths, filepath.Join(dir, e.Name()))
		seqs = append(seqs, seq)
	}
	// ReadDir sorts by name, and fixed-width hex sorts as the numbers do.
	return paths, seqs, nil
}

// Payload: for each change, uvarint index, uvarint number of entries, and
// for each entry a flags byte (1 deleted, 2 expired), uvarint key length,
// key, varint TTL in nanoseconds, uvarint value length, value. An entry's
// Index is its change's.
const (
	flagDeleted = 1 << iota
	flagExpired
)

func appendChanges(buf []byte, cs []atlas.Change) []byte {
	for _, c := range cs {
		buf = binary.AppendUvarint(buf, c.Index)
		buf = binary.AppendUvarint(buf, uint64(len(c.KVs)))
		for _, kv := range c.KVs {
			var flags byte
			if kv.Deleted {
				flags |= flagDeleted
			}
			if kv.Expired {
				flags |= flagExpired
			}
			buf = append(buf, flags)
			buf = binary.AppendUvarint(buf, uint64(len(kv.Key)))
			buf = append(buf, kv.Key...)
			buf = binary.AppendVarint(buf, int64(kv.TTL))
			buf = binary.AppendUvarint(buf, uint64(len(kv.Value)))
			buf = append(buf, kv.Value...)
		}
	}
	return buf
}

var errPayload = errors.New("malformed payload")

// decodeChanges is the inverse of appendChanges. The values it returns are
// copies, not slices of p.
func decodeChanges(p []byte) ([]atlas.Change, error) {
	uvarint := func() (uint64, error) {
		v, n := binary.Uvarint(p)
		if n <= 0 {
			return 0, errPayload
		}
		p = p[n:]
		return v, nil
	}
	bytesOf := func() ([]byte, error) {
		n, err := uvarint()
		if err != nil || n > uint64(len(p)) {
			return nil, errPayload
		}
		b := p[:n:n]
		p = p[n:]
		return b, nil
	}
	var out []atlas.Change
	for len(p) > 0 {
		index, err := uvarint()
		if err != nil {
			return nil, err
		}
		n, err := uvarint()
		// An entry takes 4 bytes at least: no count can exceed that.
		if err != nil || n > uint64(len(p))/4 {
			return nil, errPayload
		}
		c := atlas.Change{Index: index, KVs: make([]atlas.ChangedKV, 0, n)}
		for range n {
			if len(p) == 0 || p[0]&^(flagDeleted|flagExpired) != 0 {
				return nil, errPayload
			}
			flags := p[0]
			p = p[1:]
			key, err := bytesOf()
			if err != nil {
				return nil, err
			}
			ttl, m := binary.Varint(p)
			if m <= 0 {
				return nil, errPayload
			}
			p = p[m:]
			val, err := bytesOf()
			if err != nil {
				return nil, err
			}
			kv := atlas.ChangedKV{
				KV:      atlas.KV{Key: string(key), Index: index, TTL: time.Duration(ttl)},
				Deleted: flags&flagDeleted != 0,
				Expired: flags&flagExpired != 0,
			}
			if !kv.Deleted {
				kv.Value = slices.Clone(val)
				if kv.Value == nil {
					kv.Value = []byte{}
				}
			}
			c.KVs = append(c.KVs, kv)
		}
		out = append(out, c)
	}
	return out, nil
}

// readSegment returns the changes in the segment at path, and, when its
// end is an incomplete or damaged frame, how many bytes that frame takes
// to the end of the file (0 when the segment is whole). Frames that were
// never synced may follow an incomplete one; they are dropped with it.
func readSegment(path string) ([]atlas.Change, int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	var out []atlas.Change
	off := 0
	for off < len(data) {
		rest := data[off:]
		if len(rest) < frameHeader {
			return out, int64(len(rest)), nil
		}
		n := binary.LittleEndian.Uint32(rest) &^ frameFlags
		sum := binary.LittleEndian.Uint32(rest[4:])
		// Every frame holds a change at least, so a length of zero is a
		// header never written: a crash during the last append can leave
		// the file reading zeros from the frame's start (its size and
		// maybe its later pages reached the disk, not its first page).
		// A crash can also leave a frame of the right length with the
		// wrong bytes in it. Either is the end of the file.
		if n != 0 && n <= maxFrame && int(n) <= len(rest)-frameHeader {
			payload := rest[frameHeader : frameHeader+int(n)]
			if crc32.Checksum(payload, castagnoli) == sum {
				cs, err := decodeChanges(payload)
				if err != nil {
					// The checksum holds, so this is no torn write.
					return nil, 0, damaged(path, "at byte %d: %v", off, err)
				}
				out = append(out, cs...)
				off += frameHeader + int(n)
				continue
			}
			// A bad frame with more after it is damage when a sync
			// point follows (below). Its own flags say nothing: a crash
			// can keep its length's bytes and lose those of its flags.
		}
		// This reads as an incomplete last frame, or as the first of
		// frames a crash of the machine caught before they were synced.
		// A frame after it that was written when every frame before it
		// was synced means that this one was synced: its header is
		// damaged (its length reaches the end of the file, or past it),
		// and taking it for a torn write would drop acknowledged writes.
		switch at := syncedFrameIn(rest[1:]); {
		case at >= 0:
			return nil, 0, damaged(path, "damaged frame at byte %d, with a whole frame at byte %d after it", off, off+1+at)
		case at == -2:
			return nil, 0, damaged(path, "damaged frame at byte %d, followed by %d bytes that hold no incomplete write", off, len(rest))
		}
		return out, int64(len(rest)), nil
	}
	return out, 0, nil
}

// syncedFrameIn looks in b, what follows a frame header that reads as an
// incomplete write, for a whole frame (its payload starts as changes do,
// its checksum holds and it decodes) written when every frame before it
// was synced (one synced at once, or marked frameSynced), and returns the
// first one's offset, or -1 when there is none. An incomplete last
// frame holds none, but by a checksum that holds by chance: its payload is
// names and JSON, whose only bytes below 0x20 are the varints and flags
// between them. Frames acknowledged before they were synced may follow
// it, whole or not, when the machine crashed.
//
// Most offsets cost a comparison; a checksum is computed where four bytes
// read as a length that fits in what follows and the payload starts as
// changes do, and all of them together may take 1 MiB and 16 bytes a byte
// of b. Bytes that use that up (so many frame-like windows are in no
// payload Atlas writes) are damage too: it returns -2.
func syncedFrameIn(b []byte) int {
	budget := 1<<20 + 16*len(b)
	for i := 0; i+frameHeader < len(b); i++ {
		word := binary.LittleEndian.Uint32(b[i:])
		n := word &^ frameFlags
		if n == 0 || uint64(n) > uint64(len(b)-i-frameHeader) {
			continue
		}
		payload := b[i+frameHeader : i+frameHeader+int(n)]
		if !startsAsChanges(payload) {
			continue
		}
		if budget -= int(n); budget < 0 {
			return -2
		}
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(b[i+4:]) {
			continue
		}
		if _, err := decodeChanges(payload); err != nil {
			continue
		}
		if word&frameLater == 0 || word&frameSynced != 0 {
			return i
		}
		i += frameHeader + int(n) - 1 // a frame holds no other
	}
	return -1
}

// startsAsChanges reports whether p starts as appendChanges's output
// does: an index, a count, and, for a count above zero, valid flags.
func startsAsChanges(p []byte) bool {
	_, n := binary.Uvarint(p)
	if n <= 0 {
		return false
	}
	count, m := binary.Uvarint(p[n:])
	if m <= 0 {
		return false
	}
	rest := p[n+m:]
	return count == 0 || len(rest) > 0 && rest[0]&^(flagDeleted|flagExpired) == 0
}

// readLog reads every segment of dir in order and returns the changes
// after index, which must follow on from it. Only the last segment may end
// in an incomplete frame (or frames never synced); it is cut off there and
// dropped reports how many bytes that removed. Segments
// that a checkpoint left behind (it failed, or the process died before it
// removed them) may hold changes up to index only, and a gap after them.
func readLog(dir string, index uint64) (changes []atlas.Change, dropped int64, err error) {
	paths, _, err := segments(dir)
	if err != nil {
		return nil, 0, err
	}
	for i, p := range paths {
		cs, torn, err := readSegment(p)
		if err != nil {
			return nil, 0, err
		}
		if torn > 0 && i != len(paths)-1 {
			return nil, 0, damaged(p, "damaged in its last %d bytes, and later segments follow it", torn)
		}
		dropped = torn
		for _, c := range cs {
			if c.Index <= index {
				continue // the file has it already
			}
			if want := index + 1 + uint64(len(changes)); c.Index != want {
				return nil, 0, damaged(p, "holds change %d where %d belongs: changes are missing (a segment was removed, or the bbolt file is older than its log)", c.Index, want)
			}
			changes = append(changes, c)
		}
	}
	return changes, dropped, nil
}

// damaged is the error of a log Open cannot replay without losing
// acknowledged writes: it names the segment and says what to do.
func damaged(seg, format string, args ...any) error {
	return fmt.Errorf("%s: %s; Atlas will not start and lose the writes after that point: restore the data directory from a backup, or, to start without the writes that segment and any later one hold, move them out of %s", seg, fmt.Sprintf(format, args...), filepath.Dir(seg))
}

// syncLog syncs a segment after an append, and truncateLog cuts one;
// variables so that a test can make them fail.
var (
	syncLog     = fdatasync
	truncateLog = (*os.File).Truncate
)

// segment is the log segment being appended to.
type segment struct {
	f      *os.File
	path   string
	seq    uint64
	size   int64
	opened time.Time
	buf    []byte // reused frame buffer
	torn   bool   // the file may hold a refused frame after size
	// unsynced is set while a frame acknowledged before it was synced
	// may not be synced yet.
	unsynced bool
}

func createSegment(dir string, seq uint64, now time.Time) (*segment, error) {
	path := filepath.Join(dir, segmentName(seq))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		f.Close()
		os.Remove(path) // or the next try at this number fails
		return nil, err
	}
	return &segment{f: f, path: path, seq: seq, opened: now}, nil
}

// append writes the changes as one frame and, unless later, syncs it.
// After an error the frame is cut off the segment; if that fails too, the
// next append tries again first, as no frame may follow bytes that are not
// one. A frame synced at once is written only when every frame before it
// is synced: a crash of the machine during its fdatasync could otherwise
// leave it whole after an earlier frame that is not, a log that reads as
// damaged where nothing acknowledged was lost.
func (g *segment) append(cs []atlas.Change, later bool) error {
	if g.torn || !later && g.unsynced {
		if err := g.sync(); err != nil {
			return err
		}
	}
	g.buf = appendChanges(append(g.buf[:0], make([]byte, frameHeader)...), cs)
	payload := g.buf[frameHeader:]
	if len(payload) > maxFrame {
		return fmt.Errorf("a batch of %d bytes: more than a frame holds (%d)", len(payload), maxFrame)
	}
	word := uint32(len(payload))
	if later {
		word |= frameLater
		if !g.unsynced {
			word |= frameSynced
		}
	}
	binary.LittleEndian.PutUint32(g.buf, word)
	binary.LittleEndian.PutUint32(g.buf[4:], crc32.Checksum(payload, castagnoli))
	_, err := g.f.Write(g.buf)
	if err == nil && !later {
		err = syncLog(g.f)
	}
	if err != nil {
		if cerr := g.cutOff(); cerr != nil {
			return fmt.Errorf("%w (and cutting the frame off failed: %v)", err, cerr)
		}
		return err
	}
	g.size += int64(len(g.buf))
	g.unsynced = later
	if cap(g.buf) > 1<<20 {
		g.buf = nil // a large batch's buffer is not kept
	}
	return nil
}

// sync makes every frame the segment holds durable, and cuts off a refused
// frame first, which must not become durable.
func (g *segment) sync() error {
	if g.torn {
		if err := g.cutOff(); err != nil {
			return fmt.Errorf("cutting off a refused frame: %w", err)
		}
		g.unsynced = false
		return nil
	}
	if err := syncLog(g.f); err != nil {
		return err
	}
	g.unsynced = false
	return nil
}

// cutOff truncates the segment back to its last acknowledged frame after an
// append failed, and syncs that. The frame was refused, so the next Open
// must not replay it: a failed fdatasync leaves it whole in the file, and
// the kernel may still write it out. While torn is set, it may come back.
//
// Only frames acknowledged before are left, each synced when it was (or,
// made to be synced later, in memory until the next checkpoint copies it
// into the file), so appending goes on safely after a failed fdatasync
// too: what such a failure may have lost is in the frame cut off.
func (g *segment) cutOff() error {
	g.torn = true
	if err := truncateLog(g.f, g.size); err != nil {
		return err
	}
	// The file has no O_APPEND: the next frame goes where this one began.
	if _, err := g.f.Seek(g.size, io.SeekStart); err != nil {
		return err
	}
	if err := syncLog(g.f); err != nil {
		return err
	}
	g.torn = false
	return nil
}

// probeFiles names probeDir's files (os.CreateTemp's pattern, and a glob).
const probeFiles = "probe-*.tmp"

// probeDir reports whether a file can be written and synced in dir now:
// a write to the log would likely work.
func probeDir(dir string) error {
	f, err := os.CreateTemp(dir, probeFiles)
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(make([]byte, 4096))
	if err == nil {
		err = syncLog(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDir makes the creation or removal of files in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return err
	}
	return nil
}
