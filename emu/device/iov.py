"""QEMU util/iov.c over guest-physical (gpa, len) lists: size, to_buf, from_buf, discard."""
from __future__ import annotations


def iov_size(iov: list) -> int:
    return sum(n for _a, n in iov)


def iov_to_buf(m, iov: list, nbytes: int) -> bytes:
    """Copy up to nbytes from the front of the iovecs (iov_to_buf)."""
    out = bytearray()
    for gpa, n in iov:
        take = min(n, nbytes - len(out))
        if take <= 0:
            break
        out += m.mem.read(gpa, take)
    return bytes(out)


def iov_from_buf(m, iov: list, data: bytes) -> int:
    """Copy data into the iovecs from their front (iov_from_buf); returns bytes copied."""
    done = 0
    for gpa, n in iov:
        take = min(n, len(data) - done)
        if take <= 0:
            break
        m.mem.write(gpa, data[done:done + take])
        done += take
    return done


def iov_discard_front(iov: list, nbytes: int) -> list:
    out = []
    for gpa, n in iov:
        if nbytes >= n:
            nbytes -= n
            continue
        out.append((gpa + nbytes, n - nbytes))
        nbytes = 0
    return out


def iov_discard_back(iov: list, nbytes: int) -> list:
    out = list(iov)
    while out and nbytes:
        gpa, n = out[-1]
        if nbytes >= n:
            nbytes -= n
            out.pop()
        else:
            out[-1] = (gpa, n - nbytes)
            nbytes = 0
    return out
