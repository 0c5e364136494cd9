# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, binding=True
"""emu.block.hostfile.HostFile's pread/pwrite/write_zeroes compiled: the protocol layer's host
I/O (QEMU block/file-posix.c, raw_co_prw, handle_aiocb_write_zeroes), for both format drivers
(raw and qcow2).

Line-for-line translations of the Python methods named in each docstring, over the same
object (its fds, overlay copy-on-write set, undo journal and digest bookkeeping), calling
pread(2)/pwrite(2) directly.  Like os.pread/os.pwrite they make one call (retried on EINTR),
raise OSError from errno on failure, and -- as the Python methods do -- zero-pad a short read
and ignore a short write's count.  Arguments of unusual types go to the Python method itself.

For a plain HostFile the fields the two methods read are kept in C (_k_*) while the instance
dict's version tag (CPython 3.11, PEP 509: changed by every store into the dict) is unchanged;
pwrite stores `writes` and `size` into the dict itself and keeps their new values.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_SetFromErrno
from libc.errno cimport errno, EINTR
from libc.string cimport memset
from posix.types cimport off_t
from posix.unistd cimport pread as c_pread, pwrite as c_pwrite

from emu_fast._zeros cimport vb_zeros

from errno import EBADF as _EBADF

from emu.block.hostfile import BLOCK as _BLOCK_PY, CHUNK as _CHUNK_PY, HostFile

from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.object cimport PyObject

cdef extern from "Python.h":
    object PyObject_GenericGetDict(object o, void* context)
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL

cdef extern from *:
    """
    #define VBH_TYPE_TAG(t) ((unsigned long long)((PyTypeObject*)(t))->tp_version_tag)
    """
    unsigned long long VBH_TYPE_TAG(object t)

cdef extern from *:
    """
    #if PY_VERSION_HEX < 0x030C0000
    #define VBH_DICT_VER(d) ((unsigned long long)((PyDictObject*)(d))->ma_version_tag)
    #else
    #define VBH_DICT_VER(d) 0ULL
    #endif
    """
    unsigned long long VBH_DICT_VER(object d)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1

PYX_SHA256 = PYX_HASH                   # the hash of this file when it was compiled (setup.py)

cdef object _HostFile = HostFile
cdef long long BLOCK = _BLOCK_PY
cdef long long CHUNK = _CHUNK_PY
assert BLOCK == 4096 and CHUNK == 65536

# pwrite's fast path reads and writes the instance attributes in the object's __dict__ when
# that is exactly what attribute access does: the object is exactly a HostFile, whose class
# (checked again whenever its version tag changes) has neither its own __getattribute__,
# __getattr__ or __setattr__ nor a class attribute of any of these names.
_HF_NAMES = ("mode", "writes", "undo", "undo_size", "fd", "ov_fd", "cow", "base_size", "size",
             "_hashes", "_dirty")
cdef unsigned long long _hf_tag = 0      # HostFile's version tag when it was last checked
cdef long long _N_PLAIN = 0              # pwrites that took the fast path (counts())
cdef long long _N_KEPT = 0               # of them, those that ran over the kept fields (_k_*)
cdef long long _N_PREAD_KEPT = 0         # preads that ran over the kept fields

# The fields of one HostFile's __dict__ kept in C, valid while that dict's version tag
# (CPython 3.11: globally unique, changed by every mutation of the dict) is _k_ver; pwrite
# keeps them up to date with its own stores ("writes", "size") and takes the new version.
cdef object _k_dict = None               # the dict they were read from (None: nothing kept)
cdef unsigned long long _k_ver = 0
cdef int _k_mode = 0                     # 0 "overlay", 1 "write", 2 "read", 3 another str
cdef bint _k_hashes = False              # _hashes is not None
cdef set _k_dirty = None
cdef bint _k_undo = False                # undo is not None
cdef long long _k_writes = 0, _k_base = 0, _k_size = 0
cdef int _k_fd = -1, _k_ov_fd = -1
cdef set _k_cow = None
cdef long long _K_MAX = 1LL << 62        # ints kept only below this (no overflow in + 1, o + n)


def counts():
    """{'pwrite_plain': pwrite calls that ran over the instance dict (_hf_plain),
    'pwrite_kept': of them those over the kept fields (_k_fill), 'pread_kept': same for pread}"""
    return {"pwrite_plain": _N_PLAIN, "pwrite_kept": _N_KEPT, "pread_kept": _N_PREAD_KEPT}


cdef bint _k_int(dict d, str name, long long* out) except -1:
    """d[name] into *out if it is exactly an int in [-2**62, 2**62)"""
    cdef int ovf = 0
    cdef long long v
    cdef PyObject* o = PyDict_GetItemWithError(d, name)
    if o == NULL or type(<object>o) is not int:
        return False
    v = PyLong_AsLongLongAndOverflow(<object>o, &ovf)
    if ovf or v >= _K_MAX or v < -_K_MAX:
        return False
    out[0] = v
    return True


cdef bint _k_fill(dict d) except -1:
    """Keep d's fields (a HostFile's __dict__, _hf_plain) in _k_*, if they are of the plain
    types (else nothing is kept and the callers read the dict)"""
    global _k_dict, _k_ver, _k_mode, _k_hashes, _k_dirty, _k_undo, _k_writes, _k_base, _k_size
    global _k_fd, _k_ov_fd, _k_cow
    cdef PyObject* o
    cdef long long w, b, s, fd, ofd
    cdef unsigned long long ver = VBH_DICT_VER(d)
    _k_dict = None
    if ver == 0 or type(d) is not dict:
        return False
    o = PyDict_GetItemWithError(d, "mode")
    if o == NULL or type(<object>o) is not str:
        return False
    mode = <object>o
    o = PyDict_GetItemWithError(d, "_hashes")
    if o == NULL:
        return False
    hashes = <object>o is not None
    o = PyDict_GetItemWithError(d, "_dirty")
    if o == NULL or (hashes and type(<object>o) is not set):
        return False
    dirty = <object>o
    o = PyDict_GetItemWithError(d, "undo")
    if o == NULL:
        return False
    undo = <object>o is not None
    o = PyDict_GetItemWithError(d, "cow")
    if o == NULL or type(<object>o) is not set:
        return False
    cow = <object>o
    if not (_k_int(d, "writes", &w) and _k_int(d, "base_size", &b) and _k_int(d, "size", &s)
            and _k_int(d, "fd", &fd) and _k_int(d, "ov_fd", &ofd)):
        return False
    if fd < -2147483648 or fd > 2147483647 or ofd < -2147483648 or ofd > 2147483647:
        return False
    _k_mode = 0 if mode == "overlay" else 1 if mode == "write" else 2 if mode == "read" else 3
    _k_hashes = hashes
    _k_dirty = dirty if hashes else None
    _k_undo = undo
    _k_cow = cow
    _k_writes = w
    _k_base = b
    _k_size = s
    _k_fd = <int>fd
    _k_ov_fd = <int>ofd
    _k_dict = d
    _k_ver = ver
    return True


cdef inline bint _k_valid(dict d) except -1:
    """Whether _k_* hold d's fields (kept now if they can be)"""
    if d is _k_dict and VBH_DICT_VER(d) == _k_ver:
        return True
    return _k_fill(d)


cdef bint _hf_plain() except -1:
    """HostFile's attribute access is the instance dict's for _HF_NAMES"""
    global _hf_tag
    cdef unsigned long long tag = VBH_TYPE_TAG(_HostFile)
    if tag != 0 and tag == _hf_tag:
        return True
    _hf_tag = 0
    cls = _HostFile
    if (cls.__getattribute__ is not object.__getattribute__
            or cls.__setattr__ is not object.__setattr__ or hasattr(cls, "__getattr__")):
        return False
    for name in _HF_NAMES:
        if hasattr(cls, name):
            return False
    _hf_tag = VBH_TYPE_TAG(_HostFile)       # (0: checked again next time)
    return True


cdef inline object _dget(dict d, object hf, str name):
    """hf.<name> (d: hf's __dict__, see _hf_plain)"""
    cdef PyObject* o = PyDict_GetItemWithError(d, name)
    if o == NULL:
        return getattr(hf, name)          # (raises AttributeError as the access would)
    return <object>o


cdef int _pread_into(int fd, char* buf, long long n, long long off) except -1:
    """HostFile._pread_fd into buf: one pread, the rest (past EOF) zeros."""
    cdef ssize_t got
    while True:
        got = c_pread(fd, buf, <size_t>n, <off_t>off)
        if got >= 0:
            break
        if errno != EINTR:
            PyErr_SetFromErrno(OSError)
            return -1
    if got < n:
        memset(buf + got, 0, <size_t>(n - got))
    return 0


cdef int _pwrite_from(int fd, const char* buf, long long n, long long off) except -1:
    """os.pwrite(fd, buf, off): one write (retried on EINTR); its count is not checked."""
    cdef ssize_t put
    while True:
        put = c_pwrite(fd, buf, <size_t>n, <off_t>off)
        if put >= 0:
            return 0
        if errno != EINTR:
            PyErr_SetFromErrno(OSError)
            return -1


cdef bint _past_base(long long base_size, set cow, long long off, long long n) except -1:
    """Whether all of [off, off+n) lies past the base file and outside the overlay's blocks:
    HostFile.pread's loop would read it as one run of zeros."""
    cdef long long blk
    if off < base_size:
        return False
    for blk in range(off // BLOCK, (off + n - 1) // BLOCK + 1):
        if blk in cow:
            return False
    return True


cdef bytes _pread(object hf, long long off, long long n):
    """HostFile.pread (n > 0)."""
    cdef bytes out
    if hf.mode != "overlay":
        out = PyBytes_FromStringAndSize(NULL, n)
        _pread_into(hf.fd, PyBytes_AS_STRING(out), n, off)
        return out
    cdef set cow = hf.cow
    if _past_base(hf.base_size, cow, off, n):
        return vb_zeros(n)              # the same value, shared (emu_fast/_zeros.pxd)
    return _pread_overlay(cow, hf.ov_fd, hf.fd, hf.base_size, off, n)


cdef bytes _pread_overlay(set cow, int ov_fd, int base_fd, long long base_size,
                          long long off, long long n):
    """HostFile.pread's overlay loop (n > 0), over the fields given"""
    cdef bytes out
    cdef char* buf
    cdef long long pos, end, blk, run_end, mid
    cdef bint in_ov
    out = PyBytes_FromStringAndSize(NULL, n)
    buf = PyBytes_AS_STRING(out)
    pos = off
    end = off + n
    while pos < end:
        blk = pos // BLOCK
        in_ov = blk in cow
        run_end = min(end, (blk + 1) * BLOCK)
        while run_end < end and ((run_end // BLOCK) in cow) == in_ov:
            run_end = min(end, (run_end // BLOCK + 1) * BLOCK)
        if in_ov:
            _pread_into(ov_fd, buf + (pos - off), run_end - pos, pos)
        else:
            mid = max(pos, min(run_end, base_size))     # the base file counts up to base_size
            if mid > pos:
                _pread_into(base_fd, buf + (pos - off), mid - pos, pos)
            if run_end > mid:
                memset(buf + (mid - off), 0, <size_t>(run_end - mid))
        pos = run_end
    return out


cdef bytes _pread_kept(long long off, long long n):
    """HostFile.pread (n > 0) over the kept fields (_k_valid)"""
    cdef bytes out
    if _k_mode != 0:
        out = PyBytes_FromStringAndSize(NULL, n)
        _pread_into(_k_fd, PyBytes_AS_STRING(out), n, off)
        return out
    if _past_base(_k_base, _k_cow, off, n):
        return vb_zeros(n)
    return _pread_overlay(_k_cow, _k_ov_fd, _k_fd, _k_base, off, n)


cdef void _cow_block(object hf, set cow, long long blk, long long off, long long end) except *:
    """HostFile._cow_prepare's loop body for one of (first, last)"""
    cdef long long bstart
    cdef bint partial
    cdef bytes old
    if blk in cow:
        return
    bstart = blk * BLOCK
    partial = off > bstart or end < bstart + BLOCK
    if partial and bstart < hf.base_size:
        old = PyBytes_FromStringAndSize(NULL, BLOCK)
        _pread_into(hf.fd, PyBytes_AS_STRING(old), BLOCK, bstart)
        _pwrite_from(hf.ov_fd, PyBytes_AS_STRING(old), BLOCK, bstart)


cdef void _cow_prepare(object hf, long long off, long long n) except *:
    """HostFile._cow_prepare"""
    cdef long long end = off + n
    cdef long long first = off // BLOCK, last = (end - 1) // BLOCK
    cdef long long blk
    cdef set cow = hf.cow
    _cow_block(hf, cow, first, off, end)        # for blk in (first, last): ...
    _cow_block(hf, cow, last, off, end)
    for blk in range(first, last + 1):          # cow.update(range(first, last + 1)), in order
        cow.add(blk)


cdef void _keep_old(object hf, long long start, long long end) except *:
    """HostFile._keep_old"""
    cdef dict undo = hf.undo
    cdef long long limit, first, last, kept_last, b, run, i, past
    cdef bytes data
    if hf.undo_size is None:
        hf.undo_size = hf.size
    if end <= start:
        return
    limit = hf.undo_size
    first = start // BLOCK
    last = (end - 1) // BLOCK
    kept_last = min(last, (limit - 1) // BLOCK)
    b = first
    while b <= kept_last:
        if b in undo:
            b += 1
            continue
        run = b + 1
        while run <= kept_last and run not in undo:
            run += 1
        data = _pread(hf, b * BLOCK, (run - b) * BLOCK)
        for i in range(b, run):
            undo[i] = data[(i - b) * BLOCK:(i - b + 1) * BLOCK]
        b = run
    past = max(first, kept_last + 1)
    if last - past < 64:
        for b in range(past, last + 1):
            undo.setdefault(b, None)


cdef void _touch(object hf, long long off, long long n) except *:
    """HostFile._touch"""
    cdef long long c
    if hf._hashes is None:
        return
    dirty = hf._dirty
    for c in range(off // CHUNK, (off + n - 1) // CHUNK + 1):
        dirty.add(c)


def hf_pread(self, off, n):
    """HostFile.pread"""
    if type(off) is not int or type(n) is not int or off < 0:
        return _HostFile.pread(self, off, n)
    if n <= 0:
        return b""
    global _N_PREAD_KEPT
    cdef int ovf = 0, ovf2 = 0
    cdef long long o, k
    if type(self) is _HostFile and _hf_plain():
        o = PyLong_AsLongLongAndOverflow(off, &ovf)
        k = PyLong_AsLongLongAndOverflow(n, &ovf2)
        if (not ovf and not ovf2 and o < _K_MAX and k < _K_MAX
                and _k_valid(PyObject_GenericGetDict(self, NULL))):
            _N_PREAD_KEPT += 1
            return _pread_kept(o, k)
    return _pread(self, off, n)


cdef object _begin_write_plain(object hf, dict d, long long o, long long n):
    """HostFile._begin_write (n > 0) over hf's __dict__ d (_hf_plain); returns hf.mode"""
    cdef long long c, last
    hashes = _dget(d, hf, "_hashes")                                    # _touch
    if hashes is not None:
        dirty = _dget(d, hf, "_dirty")
        last = (o + n - 1) // CHUNK
        for c in range(o // CHUNK, last + 1):
            dirty.add(c)
    PyDict_SetItem(d, "writes", _dget(d, hf, "writes") + 1)
    mode = _dget(d, hf, "mode")
    if mode is not _OVERLAY and mode == "read":
        raise OSError(_EBADF, "image opened read-only")
    if _dget(d, hf, "undo") is not None:
        _keep_old(hf, o, o + n)
    return mode


cdef int _begin_write_kept(object hf, dict d, long long o, long long n) except -1:
    """HostFile._begin_write (n > 0) over the kept fields of hf's __dict__ d (_k_valid),
    kept up to date with its store of `writes`"""
    global _k_writes, _k_ver, _k_dict
    cdef long long c, last
    if _k_hashes:                                                       # _touch
        last = (o + n - 1) // CHUNK
        for c in range(o // CHUNK, last + 1):
            _k_dirty.add(c)
    PyDict_SetItem(d, "writes", _k_writes + 1)
    _k_writes += 1
    _k_ver = VBH_DICT_VER(d)            # (this store is the dict's only change since)
    if _k_writes >= _K_MAX:
        _k_dict = None
    if _k_mode == 2:
        raise OSError(_EBADF, "image opened read-only")
    if _k_undo:
        _k_dict = None                  # (_keep_old may set undo_size: read again next time)
        _keep_old(hf, o, o + n)
    return 0


cdef int _pwrite_plain(object hf, dict d, long long o, object data) except -1:
    """HostFile.pwrite (n > 0) over hf's __dict__ d (_hf_plain; the same steps as hf_pwrite's)"""
    cdef long long n = PyBytes_GET_SIZE(data), last, blk, size
    cdef const char* buf
    cdef set cow
    mode = _begin_write_plain(hf, d, o, n)
    buf = PyBytes_AS_STRING(data)
    if mode is not _OVERLAY and mode == "write":
        _pwrite_from(_dget(d, hf, "fd"), buf, n, o)
    else:
        cow_o = _dget(d, hf, "cow")
        if type(cow_o) is not set:
            _cow_prepare(hf, o, n)
        else:                                                            # _cow_prepare
            cow = <set>cow_o
            blk = o // BLOCK
            last = (o + n - 1) // BLOCK
            if o > blk * BLOCK or o + n < blk * BLOCK + BLOCK:     # (a whole block needs no
                _cow_block(hf, cow, blk, o, o + n)                #  copy: _cow_block would
            if o > last * BLOCK or o + n < last * BLOCK + BLOCK:   #  only look it up in cow)
                _cow_block(hf, cow, last, o, o + n)
            while blk <= last:
                cow.add(blk)
                blk += 1
        _pwrite_from(_dget(d, hf, "ov_fd"), buf, n, o)
    size_o = _dget(d, hf, "size")
    if type(size_o) is int and size_o >= o + n:
        pass                                   # max(size, o + n) is size itself
    else:
        PyDict_SetItem(d, "size", max(size_o, o + n))
    return 0


cdef object _OVERLAY = "overlay"


cdef int _pwrite_kept(object hf, dict d, long long o, bytes data) except -1:
    """HostFile.pwrite (n > 0) over the kept fields of hf's __dict__ d (_k_valid; the same
    steps as _pwrite_plain's)"""
    global _k_writes, _k_size, _k_ver, _k_dict, _N_KEPT
    cdef long long n = PyBytes_GET_SIZE(data), last, blk
    cdef const char* buf
    cdef set cow
    _N_KEPT += 1
    _begin_write_kept(hf, d, o, n)
    buf = PyBytes_AS_STRING(data)
    if _k_mode == 1:
        _pwrite_from(_k_fd, buf, n, o)
    else:                                                                # _cow_prepare
        cow = _k_cow
        blk = o // BLOCK
        last = (o + n - 1) // BLOCK
        if o > blk * BLOCK or o + n < blk * BLOCK + BLOCK:     # (a whole block needs no copy)
            _cow_block(hf, cow, blk, o, o + n)
        if o > last * BLOCK or o + n < last * BLOCK + BLOCK:
            _cow_block(hf, cow, last, o, o + n)
        while blk <= last:
            cow.add(blk)
            blk += 1
        _pwrite_from(_k_ov_fd, buf, n, o)
    if _k_size < o + n:                                                  # max(size, o + n)
        PyDict_SetItem(d, "size", o + n)
        _k_size = o + n
        if _k_dict is d and _k_size < _K_MAX:
            _k_ver = VBH_DICT_VER(d)
    return 0


def hf_pwrite(self, off, data):
    """HostFile.pwrite"""
    cdef long long o, n
    cdef int ovf = 0
    cdef const char* buf
    if type(off) is not int or type(data) is not bytes or off < 0:
        return _HostFile.pwrite(self, off, data)
    if type(self) is _HostFile and _hf_plain():
        if PyBytes_GET_SIZE(data) == 0:
            return None
        global _N_PLAIN
        _N_PLAIN += 1
        d = PyObject_GenericGetDict(self, NULL)
        o = PyLong_AsLongLongAndOverflow(off, &ovf)
        if not ovf and o < _K_MAX and _k_valid(d):
            _pwrite_kept(self, d, o, data)
        else:
            _pwrite_plain(self, d, off, data)
        return None
    n = PyBytes_GET_SIZE(data)
    if n == 0:
        return None
    o = off
    _touch(self, o, n)
    self.writes += 1
    mode = self.mode
    if mode == "read":
        raise OSError(_EBADF, "image opened read-only")
    if self.undo is not None:
        _keep_old(self, o, o + n)
    buf = PyBytes_AS_STRING(data)
    if mode == "write":
        _pwrite_from(self.fd, buf, n, o)
    else:
        _cow_prepare(self, o, n)
        _pwrite_from(self.ov_fd, buf, n, o)
    self.size = max(self.size, o + n)
    return None


cdef int _wz_plain(object hf, dict d, long long o, long long n) except -1:
    """HostFile.write_zeroes (n > 0) over hf's __dict__ d (_hf_plain)"""
    cdef long long inside, end = o + n
    mode = _begin_write_plain(hf, d, o, n)
    size_o = _dget(d, hf, "size")
    if mode is not _OVERLAY and mode == "write":
        zeros = vb_zeros(n)
        _pwrite_from(_dget(d, hf, "fd"), PyBytes_AS_STRING(zeros), n, o)
    elif size_o > o:
        inside = min(end, size_o) - o
        zeros = vb_zeros(inside)
        _cow_prepare(hf, o, inside)
        _pwrite_from(_dget(d, hf, "ov_fd"), PyBytes_AS_STRING(zeros), inside, o)
    if not (size_o >= end):
        PyDict_SetItem(d, "size", max(size_o, end))
    return 0


cdef int _wz_kept(object hf, dict d, long long o, long long n) except -1:
    """HostFile.write_zeroes (n > 0) over the kept fields of hf's __dict__ d (_k_valid; the
    same steps as _wz_plain's), kept up to date with its stores"""
    global _k_writes, _k_size, _k_ver, _k_dict
    cdef long long inside, end = o + n
    _begin_write_kept(hf, d, o, n)
    if _k_mode == 1:
        zeros = vb_zeros(n)
        _pwrite_from(_k_fd, PyBytes_AS_STRING(zeros), n, o)
    elif _k_size > o:
        inside = min(end, _k_size) - o
        zeros = vb_zeros(inside)
        _cow_prepare(hf, o, inside)
        _pwrite_from(_k_ov_fd, PyBytes_AS_STRING(zeros), inside, o)
    if _k_size < end:                                                    # max(size, end)
        PyDict_SetItem(d, "size", end)
        _k_size = end
        if _k_dict is d and _k_size < _K_MAX:
            _k_ver = VBH_DICT_VER(d)
        else:
            _k_dict = None
    return 0


def hf_write_zeroes(self, off, n):
    """HostFile.write_zeroes"""
    cdef long long o, k
    cdef int ovf = 0, ovf2 = 0
    if type(off) is not int or type(n) is not int or off < 0:
        return _HostFile.write_zeroes(self, off, n)
    if n <= 0:
        return None
    o = PyLong_AsLongLongAndOverflow(off, &ovf)
    k = PyLong_AsLongLongAndOverflow(n, &ovf2)
    if ovf or ovf2 or o >= _K_MAX or k >= _K_MAX or not (type(self) is _HostFile and _hf_plain()):
        return _HostFile.write_zeroes(self, off, n)
    d = PyObject_GenericGetDict(self, NULL)
    if _k_valid(d):
        _wz_kept(self, d, o, k)
    else:
        _wz_plain(self, d, o, k)
    return None


HF_METHODS = {"pread": hf_pread, "pwrite": hf_pwrite, "write_zeroes": hf_write_zeroes}
for _name, _fn in HF_METHODS.items():
    _fn.__name__ = _name    # a bound method pickles as getattr(self, __name__): the attribute's


def attach(hf):
    """Bind the compiled methods to this HostFile (instance attributes)."""
    if type(hf) is not _HostFile:
        return
    d = hf.__dict__
    for name, fn in HF_METHODS.items():
        d[name] = fn.__get__(hf, type(hf))


def detach(hf):
    d = getattr(hf, "__dict__", None)
    if d is not None:
        for name in HF_METHODS:
            d.pop(name, None)


def attached(hf):
    return getattr(hf, "__dict__", {}).get("pwrite") is not None
