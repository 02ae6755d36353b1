#!/usr/bin/env python3
"""Reproducible test data for scripts/bench-backup.sh.

    bench-data.py generate SIZE SEED OUT
        Writes a volume of SIZE bytes to OUT: a seeded mix of regions of 16-512 KiB
        (4 KiB aligned, like a file system's blocks), each one of
          zero     all zero bytes (unused space)                       20%
          text     words from a Zipf-like vocabulary, with lines       15%
          logs     timestamped log lines with counters                 15%
          rows     fixed-size binary table rows (repeated layout)      15%
          random   incompressible bytes (media, encrypted data)        35%
        Every region's content is unique (no copies of one another), so the only
        duplicate data is the zero regions. The same SIZE and SEED give the same bytes.

    bench-data.py rewrite SIZE SEED FILE...
        Rewrites about 1% of a SIZE-byte volume in scattered places: writes of 4-64 KiB at
        random 4 KiB-aligned offsets, new text/logs/rows/random content, until 1% of SIZE
        is written. Every FILE gets the same writes, in the same order, with pwrite (no
        truncation), then fsync. Prints: writes, bytes written, distinct 64 KiB blocks
        touched.

Python 3.9 or newer (random.randbytes). Output is identical on every machine for a given
Python random module, which has been stable since 3.2 for seeded integer seeds.
"""

import os
import random
import struct
import sys

KIB = 1024
MIB = 1024 * KIB
BLOCK = 4 * KIB

KINDS = ("zero", "text", "logs", "rows", "random")
WEIGHTS = (20, 15, 15, 15, 35)

# Letter frequencies roughly like English; 256 entries so a random byte picks a letter.
_LETTERS = (
    "e" * 30 + "t" * 22 + "a" * 20 + "o" * 19 + "i" * 17 + "n" * 17 + "s" * 16 + "h" * 15
    + "r" * 15 + "d" * 11 + "l" * 10 + "u" * 7 + "c" * 7 + "m" * 6 + "w" * 5 + "f" * 5
    + "g" * 5 + "y" * 5 + "p" * 5 + "b" * 4 + "v" * 3 + "k" * 2 + "j" + "x" + "q" + "z"
)
_LETTERS = (_LETTERS * 2)[:256]


class Source:
    """Deterministic content generators driven by one seeded random.Random."""

    def __init__(self, rng):
        self.rng = rng
        self.counter = 0
        self.clock = 1_700_000_000
        words = []
        for _ in range(6000):
            n = rng.choice((2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 12))
            words.append("".join(rng.choice(_LETTERS) for _ in range(n)))
        # Zipf-like: word i appears about 600/(i+1) times in the population (at least once).
        population = []
        for i, w in enumerate(words):
            population.extend([w + " "] * max(1, 600 // (i + 1)))
        population.extend([".\n"] * 300 + [", "] * 400 + ["\n\n"] * 40)
        self.population = population
        self.users = [("".join(rng.choice(_LETTERS) for _ in range(rng.randrange(4, 9)))) for _ in range(200)]
        self.paths = ["/api/v1/" + w.strip() for w in words[:300]]

    def text(self, n):
        out = []
        size = 0
        while size < n:
            chunk = "".join(self.rng.choices(self.population, k=4096))
            out.append(chunk)
            size += len(chunk)
        return "".join(out).encode()[:n]

    def logs(self, n):
        rng = self.rng
        out = []
        size = 0
        levels = ("INFO", "INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
        while size < n:
            self.counter += 1
            self.clock += rng.randrange(0, 3)
            line = "%d.%03d %s req=%010d user=%s %s status=%d bytes=%d ms=%d\n" % (
                self.clock,
                rng.randrange(1000),
                rng.choice(levels),
                self.counter,
                rng.choice(self.users),
                rng.choice(self.paths),
                rng.choice((200, 200, 200, 200, 201, 204, 304, 404, 500)),
                rng.randrange(100, 100000),
                rng.randrange(1, 2000),
            )
            out.append(line)
            size += len(line)
        return "".join(out).encode()[:n]

    def rows(self, n):
        rng = self.rng
        # 64-byte rows: id, timestamp, amount, flags, code, a name from a small set, padding.
        names = [u.encode().ljust(16, b"\0") for u in self.users[:32]]
        pack = struct.Struct("<QIIQHH16s20x").pack
        count = n // 64 + 1
        out = []
        for _ in range(count):
            self.counter += 1
            self.clock += rng.randrange(0, 2)
            out.append(
                pack(
                    self.counter,
                    self.clock & 0xFFFFFFFF,
                    rng.randrange(1, 50),
                    rng.randrange(0, 1_000_000),
                    rng.choice((0, 0, 1, 3)),
                    rng.randrange(0, 64),
                    rng.choice(names),
                )
            )
        return b"".join(out)[:n]

    def random(self, n):
        return self.rng.randbytes(n)

    def make(self, kind, n):
        if kind == "zero":
            return bytes(n)
        return getattr(self, kind)(n)


def parse_size(text):
    units = {"": 1, "K": KIB, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}
    t = text.strip().upper().rstrip("B").rstrip("I")
    num = t.rstrip("KMGT")
    return int(float(num) * units[t[len(num):]])


def generate(size, seed, out):
    rng = random.Random(seed)
    src = Source(rng)
    written = 0
    counts = dict.fromkeys(KINDS, 0)
    with open(out, "wb", buffering=4 * MIB) as f:
        while written < size:
            kind = rng.choices(KINDS, weights=WEIGHTS)[0]
            n = min(rng.randrange(4, 129) * BLOCK, size - written)
            f.write(src.make(kind, n))
            counts[kind] += n
            written += n
        f.flush()
        os.fsync(f.fileno())
    parts = ", ".join("%s %d%%" % (k, round(100 * counts[k] / size)) for k in KINDS)
    print("generated %d bytes (seed %d): %s" % (size, seed, parts))


def rewrite(size, seed, files):
    rng = random.Random(seed * 1_000_003 + 17)
    src = Source(random.Random(seed * 1_000_003 + 29))
    target = max(size // 100, BLOCK)
    fds = [os.open(p, os.O_WRONLY) for p in files]
    total = 0
    writes = 0
    touched = set()
    try:
        while total < target:
            n = rng.randrange(1, 17) * BLOCK
            n = min(n, size)
            off = rng.randrange(0, (size - n) // BLOCK + 1) * BLOCK
            kind = rng.choice(("text", "logs", "rows", "random"))
            data = src.make(kind, n)
            for fd in fds:
                done = 0
                while done < n:
                    done += os.pwrite(fd, data[done:], off + done)
            for b in range(off // (64 * KIB), (off + n - 1) // (64 * KIB) + 1):
                touched.add(b)
            total += n
            writes += 1
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
    print("%d %d %d" % (writes, total, len(touched)))


def main(argv):
    if len(argv) >= 4 and argv[1] == "generate" and len(argv) == 5:
        generate(parse_size(argv[2]), int(argv[3]), argv[4])
    elif len(argv) >= 5 and argv[1] == "rewrite":
        rewrite(parse_size(argv[2]), int(argv[3]), argv[4:])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
