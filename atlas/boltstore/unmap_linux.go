package boltstore

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// unmapPages takes at most size bytes of the file at path, mapped at addr,
// out of this process's page tables (madvise MADV_DONTNEED). On a shared
// file mapping that loses nothing: the pages stay in the kernel's page
// cache, and the next read of one maps it again.
//
// On any other memory it would: anonymous pages read back as zeros. So
// the length is capped at the mapping's own, as /proc/self/maps gives it
// for the mapping that starts at addr and maps the file at path. (bbolt's
// meta may count more pages than its mapping holds: a file cut short,
// whose missing pages are free and never read.)
func unmapPages(addr uintptr, size int64, path string) error {
	n, err := mappingLen(addr, path)
	if err != nil {
		return err
	}
	if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, addr, uintptr(min(size, n)), syscall.MADV_DONTNEED); e != 0 {
		return e
	}
	return nil
}

// mappingLen returns the length of the mapping of the file at path that
// starts at addr.
func mappingLen(addr uintptr, path string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || uintptr(start) != addr {
			continue
		}
		if ino, err := strconv.ParseUint(fields[4], 10, 64); err != nil || ino != st.Ino {
			return 0, fmt.Errorf("the mapping at %#x is not of %s", addr, path)
		}
		return int64(end - start), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no mapping of %s at %#x", path, addr)
}
