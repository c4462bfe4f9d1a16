// What Pachyderm 1.11.3-1.13.4's spout reader makes of the first archive of a
// stream that a writer's EOF ends, decided by Go's own archive/tar: for every cut
// of the archive in the file named by the first argument, one line
// "CUT commit:NAME,NAME" (committed, whole or a prefix), "CUT eof" (no archive: the
// reader waits for the next writer) or "CUT fail" (an error: nothing committed).
//
// Like getNextTarStream, it drops whole zero blocks first, then reads entries with
// tar.Reader until Next() says io.EOF.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

func firstArchive(r io.Reader) string {
	var block [512]byte
	for {
		if _, err := io.ReadFull(r, block[:]); err != nil {
			return "eof" // io.CopyN in skipReader: short or empty, io.EOF either way
		}
		if !bytes.Equal(block[:], make([]byte, 512)) {
			break
		}
	}
	tr := tar.NewReader(io.MultiReader(bytes.NewReader(block[:]), r))
	hdr, err := tr.Next()
	if errors.Is(err, io.EOF) {
		return "eof"
	}
	var names []string
	for {
		if err != nil {
			return "fail"
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return "fail"
		}
		names = append(names, hdr.Name)
		hdr, err = tr.Next()
		if errors.Is(err, io.EOF) {
			return "commit:" + strings.Join(names, ",")
		}
	}
}

func main() {
	archive, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for cut := 0; cut <= len(archive); cut++ {
		fmt.Fprintf(out, "%d %s\n", cut, firstArchive(bytes.NewReader(archive[:cut])))
	}
}
